"""The per-worker training loop: build the run, then train, validate, choose and checkpoint each epoch.

Runs inside a Ray Train worker (``train_loop_per_worker``) or, for tests and debugging, in
the calling process. Rank 0 alone validates, writes logs and writes checkpoints.
"""

from __future__ import annotations

import time
from typing import Any

import torch.distributed as dist

from training.checkpoints import report_checkpoint
from training.epoch import train_epoch
from training.run import Run, WorkerConfig, build_run
from training.selection import choose_best, patience_exhausted


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` is ``WorkerConfig.loop_config()``."""
    worker: WorkerConfig = config["worker"]
    run = build_run(worker)
    for epoch in range(run.state.epoch, run.cfg.optim.epochs):
        if patience_exhausted(run.cfg, run.ctx, run.state):
            break
        metrics = train_epoch(run, epoch)
        metrics.update(choose_best(run, epoch))
        _end_epoch(run, epoch, metrics)
    run.logger.close()


def _end_epoch(run: Run, epoch: int, metrics: dict[str, Any]) -> None:
    """Logs the epoch, records it in the state, and checkpoints every ``checkpoint_every_epochs`` and at the end."""
    if run.ctx.world_size > 1:
        dist.barrier()  # rank 0 validated while the others waited
    run.logger.epoch(metrics)
    state = run.state
    state.epoch, state.batches_done = epoch + 1, 0
    state.wall_time_s = time.monotonic() - run.wall_start
    state.history.append(metrics)
    if (epoch + 1) % run.cfg.run.checkpoint_every_epochs == 0 or epoch + 1 == run.cfg.optim.epochs:
        report_checkpoint(run, metrics)
