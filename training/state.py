"""The resume checkpoint: model, optimiser, scheduler, scaler, data position, best and averaged weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "train_state.json"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
AVERAGE_FILE = "average.safetensors"
OPTIM_FILE = "optim.pt"
AUX_FILE = "aux_heads.safetensors"  # training-only heads (intermediate CTC); never published


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint as JSON.

    Attributes:
        epoch: the epoch to run next (or the one in progress when ``batches_done`` > 0).
        batches_done: batches of ``epoch`` this rank already consumed (mid-epoch resume).
        global_step: optimiser updates so far.
        best_wer, best_cer, best_epoch: the best validation result and its epoch.
        wall_time_s: training wall time so far, across restarts.
        history: per-epoch metrics.
        best_averaged_epochs: how many epochs' weights the best model averages (0: one epoch's own).
        averaged_epochs: how many epochs ``average_weights`` holds (``run.average_last_epochs``).
        best_weights: the best model's tensors (saved to best.safetensors, not to JSON).
        average_weights: the running float64 mean of those epochs' weights (average.safetensors).
        attempts: one entry per start of the worker group: the first, and each restart Ray Train made
            after a worker or node failed (``run.max_failures``): where it resumed and on which nodes
            each rank ran, so the published record says which nodes took part and what was lost.
    """

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    best_wer: float = float("inf")
    best_cer: float = float("inf")
    best_epoch: int = 0
    wall_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_averaged_epochs: int = 0
    averaged_epochs: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    best_weights: dict[str, torch.Tensor] | None = None
    average_weights: dict[str, torch.Tensor] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("best_weights")
        data.pop("average_weights")
        return data


def save_resume_state(folder: Path, cfg, state: TrainState, recognizer, optimizer, scheduler, scaler,
                      aux_heads: torch.nn.Module | None = None) -> None:
    """Writes a checkpoint folder (model and best weights as safetensors; optimiser state as a torch file)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in recognizer.state_dict().items()}, folder / MODEL_FILE)
    if aux_heads is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in aux_heads.state_dict().items()}, folder / AUX_FILE)
    if state.best_weights is not None:
        save_file({k: v.contiguous() for k, v in state.best_weights.items()}, folder / BEST_FILE)
    if state.average_weights is not None:
        save_file({k: v.contiguous() for k, v in state.average_weights.items()}, folder / AVERAGE_FILE)
    # Our own optimiser/scheduler/scaler state: plain tensors and numbers, loaded with weights_only=True.
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict()}, folder / OPTIM_FILE)
    (folder / STATE_FILE).write_text(json.dumps({"state": state.to_json(), "config": cfg.model_dump(),
                                                 "recognizer": recognizer.config.to_dict()}, indent=1))


def read_checkpoint_summary(folder: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint: state, training config and recognizer config."""
    return json.loads((Path(folder) / STATE_FILE).read_text())


def load_best_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The best-by-validation weights, or the latest ones if no validation ran."""
    path = Path(folder) / BEST_FILE
    return load_file(path if path.exists() else Path(folder) / MODEL_FILE)


def load_resume_state(under_ray: bool, recognizer, optimizer, scheduler, scaler,
                      aux_heads: torch.nn.Module | None = None) -> TrainState | None:
    """Restores everything from Ray Train's current checkpoint, if the run is resuming."""
    if not under_ray:
        return None
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        recognizer.load_state_dict(load_file(folder / MODEL_FILE))
        if aux_heads is not None:
            aux_heads.load_state_dict(load_file(folder / AUX_FILE))
        extra = torch.load(folder / OPTIM_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        scaler.load_state_dict(extra["scaler"])
        summary = read_checkpoint_summary(folder)["state"]
        state = TrainState(**summary)
        if (folder / BEST_FILE).exists():
            state.best_weights = load_file(folder / BEST_FILE)
        if (folder / AVERAGE_FILE).exists():
            state.average_weights = load_file(folder / AVERAGE_FILE)
    return state
