"""One training epoch: batches through the model, losses, optimiser steps, step logs and mid-epoch checkpoints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from training.bn_stats import freeze_batch_norm, recalibrate_batch_norm
from training.checkpoints import report_checkpoint
from training.losses import batch_loss
from training.run import Context, Run


@dataclass
class _Tally:
    """What an epoch has done so far, for its logs and metrics."""

    utterances: int = 0
    audio_s: float = 0.0
    dropped: int = 0
    started: float = field(default_factory=time.monotonic)
    # NaN until this rank trains a batch (resumed at an epoch's end, or fewer batches than ranks).
    loss: torch.Tensor = field(default_factory=lambda: torch.tensor(float("nan")))
    final_loss: torch.Tensor = field(default_factory=lambda: torch.tensor(float("nan")))  # the model's own head


def train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """Trains ``epoch`` (from where a resumed run left it) and returns the epoch's training metrics."""
    first = run.state.batches_done if epoch == run.state.epoch else 0
    _prepare_epoch(run, epoch, resumed_mid_epoch=first > 0)
    accum, last = run.cfg.optim.grad_accum_steps, first + len(run.sampler)
    tally = _Tally()
    run.optimizer.zero_grad(set_to_none=True)
    for batch_index, batch in enumerate(run.loader, start=first + 1):
        _train_batch(run, batch, tally)
        if batch_index % accum == 0 or batch_index == last:
            _optimizer_step(run)
            run.state.global_step += 1
        if batch_index % accum == 0:
            _after_step(run, epoch, batch_index, tally)
    return _epoch_metrics(run, epoch, tally)


def _prepare_epoch(run: Run, epoch: int, resumed_mid_epoch: bool) -> None:
    """Shuffles for ``epoch``, skips what a resumed run already did, and applies the BatchNorm phases."""
    run.train_data.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    freeze_bn_from = _start_of_last(run.cfg.optim.epochs, run.cfg.run.freeze_bn_last_epochs)
    if epoch == freeze_bn_from and not resumed_mid_epoch:
        recalibrate(run.ctx, run.step_module, run.loader)  # a resumed phase keeps its checkpoint's statistics
    run.sampler.skip_batches(run.state.batches_done if epoch == run.state.epoch else 0)
    run.step_module.train()
    if run.cfg.run.freeze_encoder:
        run.recognizer.network.blocks.eval()  # frozen BN statistics must not drift either
    if freeze_bn_from is not None and epoch >= freeze_bn_from:
        freeze_batch_norm(run.recognizer)


def _train_batch(run: Run, batch, tally: _Tally) -> None:
    """Forward and backward for one batch; the gradient accumulates until the optimiser step."""
    device = run.ctx.device
    tally.dropped += batch.num_dropped
    audio, audio_lengths = batch.audio.to(device), batch.audio_lengths.to(device)
    with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        if audio.shape[0] == 0:
            # Every file of this batch was unreadable: take part in the step with a zero loss.
            audio, audio_lengths = silent_clip(device)
            tally.loss = sum(log_probs.sum() for log_probs, _ in run.step_module(audio, audio_lengths)) * 0.0
        else:
            heads = run.step_module(audio, audio_lengths)
            tally.loss, tally.final_loss = batch_loss(run.cfg, heads, batch, run.recognizer.vocabulary.blank_id,
                                                      device, run.teacher)
    run.scaler.scale(tally.loss / run.cfg.optim.grad_accum_steps).backward()
    tally.utterances += int(batch.audio.shape[0])
    tally.audio_s += float(batch.audio_lengths.sum()) / run.recognizer.sample_rate


def _optimizer_step(run: Run) -> None:
    if run.cfg.optim.grad_clip_norm:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the loss-scaled ones
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, run.cfg.optim.grad_clip_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def _after_step(run: Run, epoch: int, batch_index: int, tally: _Tally) -> None:
    """The step's log line and, every ``checkpoint_every_steps``, a mid-epoch resume checkpoint."""
    state, world = run.state, run.ctx.world_size
    if state.global_step % run.cfg.run.log_every_steps == 0:
        elapsed = time.monotonic() - tally.started
        run.logger.step(epoch=epoch, step=state.global_step, loss=float(tally.loss.detach()),
                        lr=run.optimizer.param_groups[0]["lr"], utterances_per_s=tally.utterances * world / elapsed,
                        audio_s_per_s=tally.audio_s * world / elapsed)
    every = run.cfg.run.checkpoint_every_steps
    if every and state.global_step % every == 0:
        state.epoch, state.batches_done = epoch, batch_index
        state.wall_time_s = time.monotonic() - run.wall_start
        report_checkpoint(run, {"epoch": epoch})


def _epoch_metrics(run: Run, epoch: int, tally: _Tally) -> dict[str, Any]:
    epoch_s = max(time.monotonic() - tally.started, 1e-9)
    world = run.ctx.world_size
    metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(tally.loss.detach()), "epoch_time_s": epoch_s,
                               "audio_s_per_s": tally.audio_s * world / epoch_s,
                               "utterances_per_s": tally.utterances * world / epoch_s,
                               "skipped_unreadable": tally.dropped, "step": run.state.global_step}
    if run.train_step.has_intermediate_heads:
        metrics["train_loss_final_head"] = float(tally.final_loss.detach())
    return metrics


def _start_of_last(epochs: int, last: int | None) -> int | None:
    """The 0-based epoch where the final ``last`` epochs begin; None when ``last`` is unset."""
    return None if last is None else max(0, epochs - last)


def silent_clip(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One second of silence as a batch: stands in for a batch whose every file was unreadable."""
    return torch.zeros(1, 16000, device=device), torch.tensor([16000], device=device)


def recalibrate(ctx: Context, step_module: torch.nn.Module, loader: DataLoader) -> None:
    """One pass over this rank's training batches to average BatchNorm statistics (DDP then shares rank 0's)."""
    t0 = time.monotonic()

    def forward(batch) -> None:
        audio, audio_lengths = batch.audio, batch.audio_lengths
        if audio.shape[0] == 0:
            if ctx.world_size == 1:
                return
            audio, audio_lengths = silent_clip(ctx.device)  # keeps the ranks' collectives (sync BN) in step
        step_module(audio.to(ctx.device), audio_lengths.to(ctx.device))

    count = recalibrate_batch_norm(step_module, forward, loader)
    if ctx.rank == 0:
        print(f"[train] BatchNorm statistics recalibrated over {count} batches in {time.monotonic() - t0:.0f}s; "
              f"they stay fixed from here on", flush=True)
