"""The training loop's named steps, each on its own: build the run, train one epoch, choose the best, checkpoint."""

from __future__ import annotations

import math

import torch

import training.selection as selection
from tests.training.conftest import write_config, write_manifest
from training.checkpoints import report_checkpoint
from training.config import load_config
from training.epoch import train_epoch
from training.run import WorkerConfig, build_run
from training.state import STATE_FILE, read_checkpoint_summary


def _run(tmp_path, an4_pick, val=True, **sections):
    rows = an4_pick(6)
    train = write_manifest(tmp_path / "train.json", rows[:5])
    val_path = write_manifest(tmp_path / "val.json", rows[5:]) if val else None
    sections.setdefault("data", {"num_buckets": 1})  # one bucket: ceil(5 / 2) = 3 batches
    cfg = load_config(write_config(tmp_path, train, val_path, **sections), [])
    return build_run(WorkerConfig(cfg, threads_per_worker=1))


def test_build_run_outside_ray_is_rank_zero_of_one_with_a_fresh_state(tmp_path, an4_pick) -> None:
    run = _run(tmp_path, an4_pick)
    assert (run.ctx.rank, run.ctx.world_size, run.ctx.under_ray) == (0, 1, False)
    assert run.step_module is run.train_step  # no DDP wrapper for one worker
    assert run.state.epoch == 0 and run.state.global_step == 0
    assert run.val_loader is not None and run.amp_dtype is None
    assert len(run.sampler) == 3  # 5 utterances, batches of 2


def test_train_epoch_steps_once_per_accumulation_window_and_changes_the_weights(tmp_path, an4_pick) -> None:
    run = _run(tmp_path, an4_pick, optim={"grad_accum_steps": 2})
    before = {k: v.clone() for k, v in run.recognizer.state_dict().items()}
    metrics = train_epoch(run, 0)
    # 3 batches with windows of 2: a step after batch 2 and one for the last, partial window.
    assert run.state.global_step == math.ceil(3 / 2) == metrics["step"]
    assert metrics["epoch"] == 1 and math.isfinite(metrics["train_loss"])
    changed = [k for k, v in run.recognizer.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("pointwise.weight") for k in changed)


def test_choose_best_keeps_the_weights_of_the_best_validation_only(tmp_path, an4_pick, monkeypatch) -> None:
    run = _run(tmp_path, an4_pick)
    results = iter([{"wer": 0.5, "cer": 0.3}, {"wer": 0.7, "cer": 0.4}])
    monkeypatch.setattr(selection, "evaluate", lambda *a, **k: next(results))
    assert selection.choose_best(run, 0) == {"val_wer": 0.5, "val_cer": 0.3}
    best = run.state.best_weights
    with torch.no_grad():
        next(run.recognizer.parameters()).add_(1.0)
    selection.choose_best(run, 1)  # worse: the first epoch stays the best
    assert (run.state.best_epoch, run.state.best_wer) == (1, 0.5) and run.state.best_weights is best


def test_without_validation_the_latest_epoch_is_the_best(tmp_path, an4_pick) -> None:
    run = _run(tmp_path, an4_pick, val=False)
    assert selection.choose_best(run, 2) == {}
    assert run.state.best_epoch == 3 and run.state.best_weights is not None


def test_report_checkpoint_outside_ray_writes_a_resume_folder(tmp_path, an4_pick) -> None:
    run = _run(tmp_path, an4_pick)
    run.state.global_step = 7
    report_checkpoint(run, {"epoch": 1})
    folder = tmp_path / "out" / "checkpoints" / "step-00000007"
    assert (folder / STATE_FILE).is_file()
    assert read_checkpoint_summary(folder)["state"]["global_step"] == 7
