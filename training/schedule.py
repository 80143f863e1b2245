"""Learning-rate schedule: linear warmup then cosine annealing to a floor (NeMo's CosineAnnealing)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_lr(step: int, *, base_lr: float, warmup_steps: int, max_steps: int,
                     min_lr: float = 0.0) -> float:
    """The learning rate for one optimiser step.

    ``step`` counts optimiser updates from 0. The three phases are::

        step <  warmup_steps:             base_lr * (step + 1) / (warmup_steps + 1)
        warmup_steps <= step < max_steps: min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * p)),
                                          p = (step - warmup_steps) / (max_steps - warmup_steps)
        step >= max_steps:                min_lr

    The warmup ramp never reaches ``base_lr`` itself (its last value is
    ``base_lr * warmup / (warmup + 1)``); the cosine phase starts exactly at ``base_lr``.

    Args:
        step: optimiser steps taken so far, >= 0.
        base_lr: peak learning rate, reached at ``step == warmup_steps``.
        warmup_steps: length of the linear ramp, >= 0 (0 disables it).
        max_steps: step at which the cosine reaches ``min_lr``; must exceed ``warmup_steps``.
        min_lr: the floor held after ``max_steps``. (Default: 0.0)

    Returns:
        The learning rate, a float.

    Raises:
        ValueError: negative step or warmup, or ``max_steps <= warmup_steps``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if max_steps <= warmup_steps:
        raise ValueError(f"max_steps ({max_steps}) must exceed warmup_steps ({warmup_steps})")
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _GroupFactor:
    """Multiplier LambdaLR applies to one param group's initial lr (a class, so it pickles)."""

    def __init__(self, base_lr: float, warmup_steps: int, max_steps: int, min_lr: float) -> None:
        self.base_lr = base_lr
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        # A group whose own lr is below the global floor (a small decoder_lr, say) would
        # otherwise rise during "annealing"; cap its floor at its own peak instead.
        self.min_lr = min(min_lr, base_lr)

    def __call__(self, step: int) -> float:
        if self.base_lr == 0.0:
            return 0.0
        lr = warmup_cosine_lr(step, base_lr=self.base_lr, warmup_steps=self.warmup_steps,
                              max_steps=self.max_steps, min_lr=self.min_lr)
        return lr / self.base_lr


def build_warmup_cosine_scheduler(optimizer: Optimizer, *, warmup_steps: int, max_steps: int,
                                  min_lr: float = 0.0) -> LambdaLR:
    """Wraps :func:`warmup_cosine_lr` as a ``LambdaLR`` stepped once per optimiser update.

    Each param group follows the schedule with its own initial ``lr`` as ``base_lr``
    (so a separate decoder learning rate keeps its ratio to the encoder's). Call
    ``scheduler.step()`` after every ``optimizer.step()``; right after construction the
    groups hold the lr for step 0.

    To resume, build the optimiser and this scheduler fresh, then load the optimiser's
    state dict and then the scheduler's; the groups get back the lr of the saved step.
    The scheduler's state carries the schedule's own parameters (warmup, max_steps, floor),
    so a resumed run keeps the schedule it started with.

    Args:
        optimizer: the optimiser whose groups' ``lr`` are the peak rates.
        warmup_steps: linear warmup length in optimiser steps.
        max_steps: total optimiser steps (epochs x steps per epoch).
        min_lr: absolute floor, capped per group at that group's peak. (Default: 0.0)

    Returns:
        The scheduler.
    """
    # Validate once here so a bad schedule fails at build time, not at the first step.
    warmup_cosine_lr(0, base_lr=1.0, warmup_steps=warmup_steps, max_steps=max_steps, min_lr=min_lr)
    factors = [
        _GroupFactor(group.get("initial_lr", group["lr"]), warmup_steps, max_steps, min_lr)
        for group in optimizer.param_groups
    ]
    return LambdaLR(optimizer, lr_lambda=factors)
