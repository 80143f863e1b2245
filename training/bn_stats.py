"""Fixed BatchNorm statistics: recalibrate them on training data, then train with them frozen."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer under ``module`` (SyncBatchNorm and our CPU variant included)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, forward: Callable[[object], object], batches: Iterable[object]) -> int:
    """Recomputes BatchNorm running statistics as an equal-weight average over ``batches``.

    Why: training with length-bucketed batches normalises short and long utterances with
    different batch statistics, while inference uses one set of running statistics (an
    exponential average of the last few batches). Averaging over a whole pass, and then
    training with those statistics fixed, makes training normalise exactly as inference does.

    Args:
        model: the module whose BatchNorm layers are recalibrated; it is left in eval mode
            for BatchNorm and dropout, whatever its mode before.
        forward: runs one batch through the model (its output is ignored).
        batches: the data to average over.

    Returns:
        The number of batches averaged.
    """
    layers = batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the pass
        layer.train()
    count = 0
    try:
        for batch in batches:
            forward(batch)
            count += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
            layer.eval()
    return count


def freeze_batch_norm(model: nn.Module) -> None:
    """Puts every BatchNorm layer in eval mode: running statistics are used and no longer updated.

    The affine weight and bias still train; call after ``model.train()`` each epoch.
    """
    for layer in batch_norm_layers(model):
        layer.eval()
