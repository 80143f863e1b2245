"""Tests for model.depthwise: the depthwise conv's hand-written backward against autograd's, at every padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.depthwise import OWN_BACKWARD_MIN_KERNEL, depthwise_conv


def _inputs(batch: int, channels: int, frames: int, kernel: int, dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(batch, channels, 1, frames, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, 1, kernel, dtype=dtype)
    return x.requires_grad_(), weight.requires_grad_()


@pytest.mark.parametrize("kernel, padding", [(17, 8), (17, 0), (17, 16), (16, 7), (15, 7)])
def test_gradients_pass_gradcheck(kernel, padding):
    x, weight = _inputs(3, 4, 40, kernel)
    y = depthwise_conv(x, weight, padding)
    assert type(y.grad_fn).__name__ == "_DepthwiseConvBackward"  # the hand-written backward, not oneDNN's
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv(a, b, padding), (x, weight))


def test_short_kernels_keep_onednns_backward():
    x, weight = _inputs(2, 4, 20, OWN_BACKWARD_MIN_KERNEL - 2)
    assert type(depthwise_conv(x, weight, 3).grad_fn).__name__ != "_DepthwiseConvBackward"


def test_output_and_gradients_equal_conv2d_in_float32():
    """Same sums in another order: float32 rounding over <= 32 x 63 terms of unit-scale products."""
    x, weight = _inputs(8, 64, 120, 63, torch.float32)  # kernel 63: the hand-written backward
    grad = torch.randn(8, 64, 1, 120).contiguous(memory_format=torch.channels_last)
    want = F.conv2d(x, weight, None, padding=(0, 31), groups=64)
    want_x, want_w = torch.autograd.grad(want, (x, weight), grad)
    got = depthwise_conv(x, weight, 31)
    got_x, got_w = torch.autograd.grad(got, (x, weight), grad)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_x, want_x, rtol=0, atol=1e-4)
    # A weight gradient sums 8 x 120 products of N(0, 1) values: size ~30, float32 steps ~4e-6.
    torch.testing.assert_close(got_w, want_w, rtol=0, atol=1e-3)


def test_bf16_autocast_runs_and_returns_float32_gradients():
    # 32 channels: oneDNN (torch 2.11, AMX) never returns from a channels-last bf16 depthwise
    # conv with 8 or 16 channels and a kernel of 15 or more, with or without this module.
    x, weight = _inputs(2, 32, 40, 17, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = depthwise_conv(x, weight, 8)
    assert y.dtype == torch.bfloat16
    gx, gw = torch.autograd.grad(y.float().sum(), (x, weight))
    assert gx.dtype == gw.dtype == torch.float32
    want_x, want_w = torch.autograd.grad(F.conv2d(x, weight, None, padding=(0, 8), groups=32).sum(), (x, weight))
    # bf16 keeps 8 bits: relative error up to ~2^-8 per operand, sums of 17 (input) or 80 (weight) terms.
    torch.testing.assert_close(gx, want_x, rtol=0.05, atol=0.1)
    torch.testing.assert_close(gw, want_w, rtol=0.05, atol=0.5)


def test_padding_beyond_the_kernel_is_refused():
    x, weight = _inputs(1, 2, 10, 3)
    with pytest.raises(ValueError, match="padding"):
        depthwise_conv(x, weight, 3)


def test_a_weight_for_other_channels_is_refused():
    x, _ = _inputs(1, 2, 10, 3)
    with pytest.raises(ValueError, match="depthwise weight"):
        depthwise_conv(x, torch.randn(4, 1, 1, 3, dtype=torch.float64), 1)
