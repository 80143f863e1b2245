"""Weight averaging over the fixed-BatchNorm epochs: exact means, config rules, loop wiring."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from training.config import config_from_dict
from training.state import TrainState
from training.weight_average import WeightAverage


def test_mean_is_exact_and_integer_buffers_keep_the_latest() -> None:
    snapshots = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
                 {"w": torch.tensor([2.0, 4.0]), "n": torch.tensor(5)},
                 {"w": torch.tensor([6.0, 0.0]), "n": torch.tensor(7)}]
    average = WeightAverage()
    for snapshot in snapshots:
        average.add(snapshot)
    out = average.weights(snapshots[0])
    assert average.count == 3
    assert torch.equal(out["w"], torch.tensor([3.0, 2.0])) and out["w"].dtype == torch.float32
    assert int(out["n"]) == 7


def test_adding_copies_so_later_training_does_not_change_the_average() -> None:
    weights = {"w": torch.tensor([1.0])}
    average = WeightAverage()
    average.add(weights)
    weights["w"] += 10.0
    assert float(average.weights(weights)["w"]) == 1.0


def test_restored_average_continues_where_it_stopped() -> None:
    first = WeightAverage()
    first.add({"w": torch.tensor([0.0])})
    first.add({"w": torch.tensor([4.0])})
    restored = WeightAverage(first.mean, first.count)
    restored.add({"w": torch.tensor([8.0])})
    assert float(restored.weights({"w": torch.zeros(1)})["w"]) == 4.0
    with pytest.raises(ValueError):
        WeightAverage(None, 2)


_BASE = {"model": {"preset": "quartznet_5x3"}, "data": {"train_manifests": [{"path": "t.json"}]}}


def test_config_needs_the_window_inside_the_fixed_bn_epochs() -> None:
    ok = config_from_dict({**_BASE, "run": {"freeze_bn_last_epochs": 4, "average_last_epochs": 4}})
    assert ok.run.average_last_epochs == 4
    for run in ({"average_last_epochs": 2}, {"freeze_bn_last_epochs": 2, "average_last_epochs": 3}):
        with pytest.raises(ValueError, match="average_last_epochs"):
            config_from_dict({**_BASE, "run": run})


def test_average_replaces_the_best_only_when_it_validates_better(monkeypatch) -> None:
    from torch import nn

    import training.selection as loop

    def state_after_two_epochs(wer_of_average: float) -> TrainState:
        monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"wer": wer_of_average, "cer": 0.1})
        model = nn.Linear(2, 1)
        state = TrainState(best_wer=0.5, best_cer=0.4, best_epoch=3, best_weights={"sentinel": torch.zeros(1)})
        for epoch, value in ((3, 1.0), (4, 3.0)):
            with torch.no_grad():
                model.weight.fill_(value)
            metrics = loop.update_average(state, model, val_loader=object(), device=torch.device("cpu"),
                                           epoch=epoch)
        assert metrics["averaged_epochs"] == 2 and metrics["val_wer_average"] == wer_of_average
        return state

    worse = state_after_two_epochs(0.6)
    assert (worse.best_wer, worse.best_epoch, worse.best_averaged_epochs) == (0.5, 3, 0)
    assert "sentinel" in worse.best_weights
    better = state_after_two_epochs(0.2)
    assert (better.best_wer, better.best_epoch, better.best_averaged_epochs) == (0.2, 5, 2)
    assert torch.equal(better.best_weights["weight"], torch.full((1, 2), 2.0))


def test_without_validation_the_average_is_what_gets_published() -> None:
    from torch import nn

    import training.selection as loop

    model, state = nn.Linear(1, 1), TrainState()
    for epoch, value in ((0, 2.0), (1, 4.0)):
        with torch.no_grad():
            model.weight.fill_(value)
        loop.update_average(state, model, val_loader=None, device=torch.device("cpu"), epoch=epoch)
    assert (state.best_epoch, state.best_averaged_epochs) == (2, 2)
    assert float(state.best_weights["weight"]) == 3.0


def test_training_loop_checkpoints_the_mean_of_the_last_epochs(an4_pick, tmp_path) -> None:
    """In-process loop, 3 epochs, BN fixed for 2, averaged over 2: the checkpointed mean is exact."""
    from tests.training.conftest import write_config, write_manifest
    from training.config import load_config
    from training.loop import train_loop_per_worker
    from training.run import WorkerConfig

    rows = an4_pick(6)
    train = write_manifest(tmp_path / "train.json", rows[:4])
    val = write_manifest(tmp_path / "val.json", rows[4:])
    run = {"freeze_bn_last_epochs": 2, "average_last_epochs": 2}
    data = {"batch_size": 2, "num_buckets": 1}
    cfg = load_config(write_config(tmp_path, train, val, data=data, optim={"epochs": 3}, run=run), [])
    train_loop_per_worker(WorkerConfig(cfg).loop_config())

    checkpoints = sorted((tmp_path / "out" / "checkpoints").iterdir())
    assert len(checkpoints) == 3
    epoch2, epoch3 = (load_file(c / "model.safetensors") for c in checkpoints[1:])
    average = load_file(checkpoints[-1] / "average.safetensors")
    for key, value in epoch3.items():
        if value.is_floating_point():
            expected = (epoch2[key].double() + value.double()) / 2
            assert torch.allclose(average[key], expected, atol=1e-12), key
    assert not (checkpoints[0] / "average.safetensors").exists()  # epoch 1 is outside the window
    state = json.loads((checkpoints[-1] / "train_state.json").read_text())["state"]
    assert state["averaged_epochs"] == 2
    assert "val_wer_average" in state["history"][-1] and "val_wer_average" not in state["history"][1]
    best = load_file(checkpoints[-1] / "best.safetensors")
    if state["best_averaged_epochs"] == 2:
        assert all(torch.equal(best[k], average[k].to(best[k].dtype)) for k in best)
