"""A stride-1 depthwise conv over channels-last (B, C, 1, T) whose backward runs as forward convs, for training on CPU.

oneDNN's own backward for a depthwise conv is slow: 75-80 ms for both gradients of a 512-channel,
kernel-63 conv over 32 x 250 frames, against 4.5 ms for the forward. Both gradients are
convolutions themselves, which oneDNN runs at forward speed:

* the input's gradient is the output's gradient convolved with the flipped kernel
  (padding ``K - 1 - p``);
* the weight's gradient for channel c and tap k is sum over b and t of ``x_pad[b, c, t + k] *
  grad[b, c, t]``: one grouped conv whose B * C groups each take a gradient row as their kernel,
  summed over the batch afterwards.

Together ~20 ms for that conv. The sums are the same; only their order (and so the rounding) differs.
For short kernels oneDNN's own backward is the faster one, and is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, None, padding=(0, padding), groups=weight.shape[0])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        p, (channels, kernel) = ctx.padding, (weight.shape[0], weight.shape[-1])
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad.contiguous(memory_format=torch.channels_last), weight.flip(-1), None,
                              padding=(0, kernel - 1 - p), groups=channels)
        if ctx.needs_input_grad[1]:
            batch, frames_out = x.shape[0], grad.shape[-1]
            padded = F.pad(x, (p, frames_out + kernel - 1 - x.shape[-1] - p)).contiguous()
            rows = padded.view(1, batch * channels, 1, padded.shape[-1])
            kernels = grad.contiguous().view(batch * channels, 1, 1, frames_out)
            taps = F.conv2d(rows, kernels, None, groups=batch * channels)
            grad_weight = taps.view(batch, channels, kernel).sum(0).view_as(weight)
        return grad_x, grad_weight, None


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """``conv2d(x, weight, padding=(0, padding), groups=C)`` for channels-last (B, C, 1, T) ``x``, stride 1.

    ``weight`` is (C, 1, 1, K) with ``padding <= K - 1``; no bias. Kernels under
    ``OWN_BACKWARD_MIN_KERNEL`` keep oneDNN's backward.
    """
    if weight.shape[0] != x.shape[1] or weight.shape[1] != 1:
        raise ValueError(f"a depthwise weight for {x.shape[1]} channels is (C, 1, 1, K), got {tuple(weight.shape)}")
    if padding > weight.shape[-1] - 1:
        raise ValueError(f"padding {padding} exceeds kernel {weight.shape[-1]} - 1")
    if weight.shape[-1] < OWN_BACKWARD_MIN_KERNEL:
        return F.conv2d(x, weight, None, padding=(0, padding), groups=weight.shape[0])
    return _DepthwiseConv.apply(x, weight, padding)


# oneDNN's own backward is fast up to kernel 13 and slow from 15 (64 x 256 channels: kernel 13
# over 250 frames 6.5 ms, ours 8.8; kernel 15 over 75 frames 17.0 ms, ours 11.2; kernel 3 over
# 40 frames 2.4 ms, ours 4.5), so shorter kernels keep it.
OWN_BACKWARD_MIN_KERNEL = 15
