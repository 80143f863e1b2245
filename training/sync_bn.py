"""Synchronised BatchNorm for CPU (gloo) data-parallel training, and the model-wide converter."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sums a tensor over the default process group; the backward sums gradients the same way.

    Every rank's loss depends on the summed statistics, so the gradient reaching one
    rank's local statistics is the sum of all ranks' gradients w.r.t. the global sum.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        reduced = tensor.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CpuSyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the whole data-parallel batch.

    ``torch.nn.SyncBatchNorm`` only runs on CUDA; this layer does the same over gloo.
    In training mode each rank sums, per channel, ``x`` and ``x**2`` over batch and time
    together with the element count, all-reduces the three, and normalises with the global
    mean and biased variance. The running variance gets the unbiased estimate, as in
    BatchNorm. The all-reduce is autograd-aware, so input and parameter gradients equal
    those of one BatchNorm1d over the concatenated batch (parameter gradients before
    DDP's averaging).

    In eval mode, or when no process group with more than one rank is initialised, it
    is exactly ``nn.BatchNorm1d``. Every rank must call it the same number of times per
    step (true for DDP), or the all-reduces deadlock.

    Statistics are accumulated in float64: the sum-of-squares form of the variance
    (E[x^2] - E[x]^2) cancels badly in float32 when a channel's mean is large next to its
    spread, and the reduction buffers are only (2C + 1) numbers.

    Input: (B, C) or (B, C, T); statistics over every dimension but C.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - BatchNorm's own name
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats or not _is_distributed():
            return super().forward(input)
        self._check_input_dim(input)
        return self._sync_forward(input)

    def _sync_forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        reduce_dims = [0] + list(range(2, x.dim()))
        local_count = x.numel() // channels
        stats = torch.cat([
            x.sum(dim=reduce_dims, dtype=torch.float64),
            x.pow(2).sum(dim=reduce_dims, dtype=torch.float64),
            torch.full((1,), float(local_count), dtype=torch.float64, device=x.device),
        ])
        stats = _AllReduceSum.apply(stats)
        total_sum, total_sq_sum, count = stats[:channels], stats[channels:2 * channels], stats[2 * channels]
        count_value = int(count.item())
        if count_value <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {count_value} "
                             "across all ranks")
        mean = total_sum / count
        var = (total_sq_sum / count - mean.pow(2)).clamp(min=0.0)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * count_value / (count_value - 1))

        shape = [1, channels] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight.double()
            shift = shift * self.weight.double() + self.bias.double()
        # Normalise in the input's precision: a float64 copy of the activations would double
        # memory for no benefit once the statistics themselves are accurate.
        return x * scale.to(x.dtype).view(shape) + shift.to(x.dtype).view(shape)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        # momentum=None means a cumulative average, exactly as BatchNorm does it.
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(unbiased_var.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(module: nn.Module, *, use_cuda: bool) -> nn.Module:
    """Makes every BatchNorm1d in ``module`` synchronise statistics across ranks.

    Call it before wrapping the model in DDP. On CUDA this is
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``. On CPU each ``nn.BatchNorm1d``
    (subclasses included, already-converted layers excepted) is replaced by a
    :class:`CpuSyncBatchNorm1d` that shares its weight and bias parameters and copies its
    running statistics, eps, momentum and train/eval mode.

    Args:
        module: the model (or a bare BatchNorm1d).
        use_cuda: whether the model trains on CUDA devices (NCCL).

    Returns:
        The converted module; the same object unless ``module`` itself was a BatchNorm1d.
    """
    if use_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm1d) and not isinstance(module, CpuSyncBatchNorm1d):
        converted = CpuSyncBatchNorm1d(module.num_features, eps=module.eps, momentum=module.momentum,
                                       affine=module.affine, track_running_stats=module.track_running_stats,
                                       device=_device_of(module))
        if module.affine:
            # Share, not copy, the Parameters so an optimiser built earlier still owns them.
            converted.weight = module.weight
            converted.bias = module.bias
        if module.track_running_stats:
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        if hasattr(module, "qconfig"):
            converted.qconfig = module.qconfig
        return converted
    for name, child in module.named_children():
        new_child = _convert_cpu(child)
        if new_child is not child:
            module.add_module(name, new_child)
    return module


def _device_of(module: nn.Module) -> torch.device | None:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return None
