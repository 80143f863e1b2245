"""MaskedConv1d's fast CPU kernels (use_fast_cpu_convs) compute the reference's convolutions, and _Dropout drops right."""

from __future__ import annotations

import pytest
import torch

from model.network_config import BlockConfig, QuartzNetConfig
from model.quartznet import MaskedConv1d, QuartzNet, _Dropout, use_fast_cpu_convs
from tests.model.test_quartznet import DENSE_CONFIG, SEPARABLE_CONFIG

# Every conv kind the fast path rewrites: strided and dilated depthwise (odd kernel), an even
# dilated kernel it must leave alone, pointwise, and full convs.
KERNEL_CONFIG = QuartzNetConfig((
    BlockConfig(24, 1, 11, stride=2),
    BlockConfig(24, 1, 17, residual=True),  # long enough for model.depthwise's own backward
    BlockConfig(24, 2, 9, dilation=3, residual=True),
    BlockConfig(32, 1, 6, dilation=2),
    BlockConfig(32, 1, 1, separable=False),
), num_labels=5, feat_in=16, name="kernels")


def _forward_backward(net: QuartzNet, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, list]:
    net.zero_grad()
    torch.manual_seed(7)  # the same dropout masks on both sides
    log_probs, out_lengths = net(feats, lengths)
    valid = torch.arange(log_probs.shape[1])[None, :] < out_lengths[:, None]
    (log_probs * valid[..., None]).sum().backward()
    return log_probs, [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("config", [KERNEL_CONFIG, SEPARABLE_CONFIG, DENSE_CONFIG], ids=lambda c: c.name)
def test_fast_kernels_give_the_reference_outputs_and_gradients(config):
    """In float64 the two paths agree to rounding (1e-10), though every conv runs another kernel."""
    torch.manual_seed(0)
    net = QuartzNet(config).double().train()
    feats = torch.randn(3, config.feat_in, 61, dtype=torch.float64)
    lengths = torch.tensor([61, 40, 17])
    want, want_grads = _forward_backward(net, feats, lengths)
    assert use_fast_cpu_convs(net) == sum(isinstance(m, MaskedConv1d) for m in net.modules())
    got, got_grads = _forward_backward(net, feats, lengths)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
    use_fast_cpu_convs(net, enabled=False)
    assert not any(m.fast_cpu for m in net.modules() if isinstance(m, MaskedConv1d))


def test_a_wrong_phase_split_would_be_caught():
    """The dilated path really differs from a plain conv: dropping the dilation changes the output."""
    conv = MaskedConv1d(8, 8, 9, dilation=3, padding=12, groups=8, bias=False).double()
    x, lengths = torch.randn(2, 8, 50, dtype=torch.float64), torch.tensor([50, 33])
    want, _ = conv(x, lengths)
    conv.fast_cpu = True
    got, _ = conv(x, lengths)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    undilated = MaskedConv1d(8, 8, 9, padding=4, groups=8, bias=False).double()
    undilated.weight.data.copy_(conv.weight.data)
    assert (undilated(x, lengths)[0] - want).abs().max() > 1e-2


def test_dropout_keeps_one_minus_p_and_rescales():
    drop = _Dropout(0.2).train()
    x = torch.ones(400, 1000)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    # 400k Bernoulli(0.8) draws: the kept share has standard deviation sqrt(0.16 / 4e5) = 6.3e-4.
    assert abs(kept - 0.8) < 5 * 6.3e-4
    # Each 64-bit draw feeds four elements; every quarter must be uniform too (a draw whose top
    # bit is always 0 would keep every fourth element): 100k draws each, sd 1.26e-3.
    for lane in range(4):
        assert abs((y.flatten()[lane::4] != 0).float().mean().item() - 0.8) < 5 * 1.26e-3, lane
    # 0.2 drops 13,107 of 65,536 values: kept ones are scaled by exactly 65536 / 52429.
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 65536 / 52429))
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(_Dropout(0.0).train()(x), x)
