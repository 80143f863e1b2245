"""Reporting a resume checkpoint to Ray Train (or, outside Ray, writing it under the output folder)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.state import save_resume_state

if TYPE_CHECKING:
    from training.run import Run


def report_checkpoint(run: Run, metrics: dict[str, Any]) -> None:
    """Saves a resume checkpoint of ``run`` (rank 0 writes; every rank reports so Ray stays in step)."""
    ctx, cfg, state = run.ctx, run.cfg, run.state
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_dir = None
        if ctx.rank == 0:
            save_resume_state(Path(tmp), cfg, state, run.recognizer, run.optimizer, run.scheduler, run.scaler,
                              run.train_step.inter_ctc_heads or None)
            checkpoint_dir = tmp
        if ctx.under_ray:
            import ray.train

            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, checkpoint=checkpoint)
        elif checkpoint_dir:
            target = Path(cfg.run.output_dir) / "checkpoints" / f"step-{state.global_step:08d}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(tmp, target, dirs_exist_ok=True)
