"""Choosing what a run publishes: validation, the best epoch, the weight average, and early stopping."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from model.decoding import greedy_decode
from model.recognizer import SpeechRecognizer
from training.config import TrainConfig
from training.metrics import word_char_error_rates
from training.run import Context, Run
from training.state import TrainState
from training.weight_average import WeightAverage


def evaluate(recognizer: SpeechRecognizer, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Greedy WER/CER over a loader, with the same decoder the service uses."""
    recognizer.eval()
    labels = recognizer.vocabulary.labels
    refs, hyps = [], []
    with torch.inference_mode():
        for batch in loader:
            if batch.audio.shape[0] == 0:
                continue
            log_probs, lengths = recognizer(batch.audio.to(device), batch.audio_lengths.to(device))
            log_probs = log_probs.cpu().numpy()
            for i in range(len(lengths)):
                hyps.append(greedy_decode(log_probs[i, : int(lengths[i])], labels,
                                          recognizer.frame_duration_s).text)
                refs.append(recognizer.vocabulary.decode(batch.targets[i, : int(batch.target_lengths[i])].tolist()))
    return word_char_error_rates(refs, hyps)


def choose_best(run: Run, epoch: int) -> dict[str, Any]:
    """Validates the epoch's weights (and their average with earlier epochs) and keeps the best; returns the
    validation metrics. Without validation data the latest weights (or their average) are the best."""
    state, metrics = run.state, {}
    if run.val_loader is not None:
        metrics = {f"val_{k}": v for k, v in evaluate(run.recognizer, run.val_loader, run.ctx.device).items()}
        if metrics["val_wer"] <= state.best_wer:
            state.best_wer, state.best_cer, state.best_epoch = metrics["val_wer"], metrics["val_cer"], epoch + 1
            state.best_weights = _snapshot(run.recognizer)
            state.best_averaged_epochs = 0
    elif run.ctx.rank == 0:
        state.best_epoch = epoch + 1
        state.best_weights = _snapshot(run.recognizer)
    average_last = run.cfg.run.average_last_epochs
    if average_last is not None and epoch >= max(0, run.cfg.optim.epochs - average_last) and run.ctx.rank == 0:
        metrics.update(update_average(state, run.recognizer, run.val_loader, run.ctx.device, epoch))
    return metrics


def update_average(state: TrainState, recognizer: SpeechRecognizer, val_loader: DataLoader | None,
                   device: torch.device, epoch: int) -> dict[str, Any]:
    """Adds this epoch's weights to the running average; the average becomes the best if it validates best."""
    average = WeightAverage(state.average_weights, state.averaged_epochs)
    average.add(recognizer.state_dict())
    state.average_weights, state.averaged_epochs = average.mean, average.count
    metrics: dict[str, Any] = {"averaged_epochs": average.count}
    weights = average.weights(recognizer.state_dict())  # CPU tensors the average never changes in place
    if val_loader is None:
        # Nothing to choose by: the average of the epochs asked for is what gets published.
        state.best_weights = weights
        state.best_epoch, state.best_averaged_epochs = epoch + 1, average.count
        return metrics
    if average.count < 2:
        return metrics  # the average of one epoch is that epoch, validated already
    candidate = copy.deepcopy(recognizer)
    candidate.load_state_dict(weights)
    result = evaluate(candidate, val_loader, device)
    metrics.update({"val_wer_average": result["wer"], "val_cer_average": result["cer"]})
    if result["wer"] <= state.best_wer:
        state.best_wer, state.best_cer, state.best_epoch = result["wer"], result["cer"], epoch + 1
        state.best_weights = weights
        state.best_averaged_epochs = average.count
    return metrics


def patience_exhausted(cfg: TrainConfig, ctx: Context, state: TrainState) -> bool:
    """Early stopping, decided on rank 0 (the only rank that validates) and shared with all ranks."""
    patience = cfg.run.early_stop_patience_epochs
    if patience is None:
        return False
    stop = state.best_epoch > 0 and state.epoch - state.best_epoch >= patience
    if ctx.world_size > 1:
        flag = torch.tensor([1.0 if stop else 0.0], device=ctx.device)
        dist.broadcast(flag, src=0)
        stop = bool(flag.item())
    if stop and ctx.rank == 0:
        print(f"[train] stopping early at epoch {state.epoch}: validation WER has not improved for "
              f"{state.epoch - state.best_epoch} epochs (best {state.best_wer * 100:.2f}% at epoch "
              f"{state.best_epoch})", flush=True)
    return stop


def _snapshot(recognizer: SpeechRecognizer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in recognizer.state_dict().items()}
