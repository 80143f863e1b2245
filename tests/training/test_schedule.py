"""Warmup + cosine learning-rate schedule: endpoints, shape and the LambdaLR wrapper."""

import math

import pytest
import torch

from training.schedule import build_warmup_cosine_scheduler, warmup_cosine_lr

KW = dict(base_lr=0.01, warmup_steps=10, max_steps=110, min_lr=1e-4)


def test_endpoints():
    assert warmup_cosine_lr(0, **KW) == pytest.approx(0.01 * 1 / 11)
    assert warmup_cosine_lr(9, **KW) == pytest.approx(0.01 * 10 / 11)
    assert warmup_cosine_lr(10, **KW) == pytest.approx(0.01)
    assert warmup_cosine_lr(60, **KW) == pytest.approx(1e-4 + (0.01 - 1e-4) * 0.5)
    assert warmup_cosine_lr(110, **KW) == pytest.approx(1e-4)
    assert warmup_cosine_lr(10_000, **KW) == 1e-4


def test_monotone_up_then_down():
    lrs = [warmup_cosine_lr(step, **KW) for step in range(120)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert max(lrs) == pytest.approx(0.01)


def test_no_warmup_starts_at_base():
    assert warmup_cosine_lr(0, base_lr=0.02, warmup_steps=0, max_steps=100) == pytest.approx(0.02)
    quarter = warmup_cosine_lr(25, base_lr=0.02, warmup_steps=0, max_steps=100)
    assert quarter == pytest.approx(0.01 * (1 + math.cos(math.pi / 4)))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_steps"):
        warmup_cosine_lr(0, base_lr=1.0, warmup_steps=10, max_steps=10)
    with pytest.raises(ValueError, match="step"):
        warmup_cosine_lr(-1, **KW)


def test_lambda_lr_follows_schedule_per_group():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 0.01}, {"params": [params[1]], "lr": 0.001}])
    sched = build_warmup_cosine_scheduler(opt, warmup_steps=10, max_steps=110, min_lr=1e-4)
    for step in range(120):
        assert opt.param_groups[0]["lr"] == pytest.approx(warmup_cosine_lr(step, **KW))
        expected_small = warmup_cosine_lr(step, base_lr=0.001, warmup_steps=10, max_steps=110, min_lr=1e-4)
        assert opt.param_groups[1]["lr"] == pytest.approx(expected_small)
        opt.step()
        sched.step()


def test_scheduler_resumes_from_state_dict():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.01)
    sched = build_warmup_cosine_scheduler(opt, warmup_steps=10, max_steps=110, min_lr=1e-4)
    for _ in range(37):
        opt.step()
        sched.step()
    # Resume order: build both fresh, then load the optimiser's and the scheduler's state.
    opt2 = torch.optim.SGD([param], lr=0.01)
    sched2 = build_warmup_cosine_scheduler(opt2, warmup_steps=10, max_steps=110, min_lr=1e-4)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(warmup_cosine_lr(37, **KW))
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(warmup_cosine_lr(38, **KW))
