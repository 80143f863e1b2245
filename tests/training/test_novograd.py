"""NovoGrad against hand-computed updates, plus GradScaler and state_dict behaviour."""

import io

import pytest
import torch
from torch import nn

from training.novograd import NovoGrad


# NovoGrad does its arithmetic in float32 by design (fp16 parameters are stepped in float32).
# Each expected value below is an exact decimal reached by about a dozen float32 roundings of at
# most half an ulp each, plus half an ulp to store the decimal itself: 16 ulps relative is the
# worst case, about 1.9e-6, while a wrong update rule is off by 1e-2 or more.
FLOAT32_ROUNDING = dict(rtol=16 * 2.0 ** -23, atol=0)


def _tiny_linear() -> nn.Linear:
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.bias.copy_(torch.tensor([0.5]))
    return layer


def _step(layer: nn.Linear, opt: torch.optim.Optimizer, x: list[float]) -> None:
    opt.zero_grad()
    layer(torch.tensor([x])).sum().backward()  # grad w = x, grad b = 1
    opt.step()


def test_two_steps_match_hand_computation():
    layer = _tiny_linear()
    opt = NovoGrad(layer.parameters(), lr=0.1, betas=(0.5, 0.48), weight_decay=0.1)

    # Step 1, weight: g = [3, 4], v = ||g||^2 = 25 (initialised, not averaged)
    # g' = g / 5 + 0.1 * [1, 2] = [0.7, 1.0]; m = g'; w = [1, 2] - 0.1 * m = [0.93, 1.9]
    # bias: g = 1, v = 1, g' = 1 + 0.1 * 0.5 = 1.05, m = 1.05, b = 0.5 - 0.105 = 0.395
    _step(layer, opt, [3.0, 4.0])
    torch.testing.assert_close(layer.weight, torch.tensor([[0.93, 1.9]]), **FLOAT32_ROUNDING)
    torch.testing.assert_close(layer.bias, torch.tensor([0.395]), **FLOAT32_ROUNDING)

    # Step 2, weight: g = [6, 8], v = 0.48 * 25 + 0.52 * 100 = 64, sqrt(v) = 8
    # g' = [0.75, 1.0] + 0.1 * [0.93, 1.9] = [0.843, 1.19]
    # m = 0.5 * [0.7, 1.0] + g' = [1.193, 1.69]; w = [0.93, 1.9] - 0.1 * m = [0.8107, 1.731]
    # bias: v = 0.48 + 0.52 = 1, g' = 1 + 0.0395 = 1.0395, m = 0.525 + 1.0395 = 1.5645,
    # b = 0.395 - 0.15645 = 0.23855
    _step(layer, opt, [6.0, 8.0])
    torch.testing.assert_close(layer.weight, torch.tensor([[0.8107, 1.731]]), **FLOAT32_ROUNDING)
    torch.testing.assert_close(layer.bias, torch.tensor([0.23855]), **FLOAT32_ROUNDING)
    assert opt.state[layer.weight]["exp_avg_sq"].item() == pytest.approx(64.0)


def test_grad_averaging_scales_the_first_moment():
    layer = _tiny_linear()
    opt = NovoGrad([layer.weight], lr=0.1, betas=(0.5, 0.5), grad_averaging=True)
    _step(layer, opt, [3.0, 4.0])
    # g' = [0.6, 0.8] * (1 - 0.5) = [0.3, 0.4]; w = [1, 2] - 0.1 * g'
    torch.testing.assert_close(layer.weight, torch.tensor([[0.97, 1.96]]), **FLOAT32_ROUNDING)


def test_params_without_grad_are_skipped():
    frozen = nn.Parameter(torch.ones(3))
    layer = _tiny_linear()
    opt = NovoGrad([frozen, *layer.parameters()], lr=0.1)
    _step(layer, opt, [3.0, 4.0])
    assert torch.equal(frozen, torch.ones(3))
    assert frozen not in opt.state


def test_grad_scaler_step_equals_plain_step():
    plain, scaled = _tiny_linear(), _tiny_linear()
    plain_opt = NovoGrad(plain.parameters(), lr=0.1, weight_decay=0.01)
    scaled_opt = NovoGrad(scaled.parameters(), lr=0.1, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for x in ([3.0, 4.0], [-1.0, 2.0]):
        _step(plain, plain_opt, x)
        scaled_opt.zero_grad()
        scaler.scale(scaled(torch.tensor([x])).sum()).backward()
        scaler.step(scaled_opt)
        scaler.update()
    torch.testing.assert_close(scaled.weight, plain.weight)
    torch.testing.assert_close(scaled.bias, plain.bias)


def test_state_dict_round_trip_continues_identically():
    a, b = _tiny_linear(), _tiny_linear()
    opt_a = NovoGrad(a.parameters(), lr=0.1, betas=(0.9, 0.9), weight_decay=0.01)
    _step(a, opt_a, [3.0, 4.0])
    b.load_state_dict(a.state_dict())
    opt_b = NovoGrad(b.parameters(), lr=0.5)
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)  # a real checkpoint: state_dict() alone shares tensors
    buffer.seek(0)
    opt_b.load_state_dict(torch.load(buffer))
    assert opt_b.param_groups[0]["lr"] == 0.1
    _step(a, opt_a, [1.0, -2.0])
    _step(b, opt_b, [1.0, -2.0])
    torch.testing.assert_close(b.weight, a.weight, atol=0, rtol=0)
    torch.testing.assert_close(b.bias, a.bias, atol=0, rtol=0)
