"""Fixed BatchNorm statistics: recalibration averages a whole pass, freezing stops updates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.bn_stats import batch_norm_layers, freeze_batch_norm, recalibrate_batch_norm
from training.config import config_from_dict
from training.sync_bn import CpuSyncBatchNorm1d


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4, momentum=0.1), nn.Dropout(0.5))


def test_recalibration_is_an_equal_weight_average_over_the_pass() -> None:
    net = _net()
    # Batches of different lengths and scales, as length-bucketed training produces them.
    batches = [torch.randn(2, 3, 5 + 7 * i) * (1 + i) + i for i in range(4)]
    with torch.no_grad():
        conv_out = [net[0](b) for b in batches]
    expected_mean = torch.stack([o.mean(dim=(0, 2)) for o in conv_out]).mean(0)
    expected_var = torch.stack([o.var(dim=(0, 2), unbiased=True) for o in conv_out]).mean(0)

    net.train()
    count = recalibrate_batch_norm(net, net, batches)

    bn = net[1]
    assert count == 4
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.1, "the layer's own momentum is restored"
    assert not bn.training and not net[2].training


def test_frozen_batch_norm_trains_like_it_infers() -> None:
    net = _net()
    recalibrate_batch_norm(net, net, [torch.randn(2, 3, 9)])
    before = net[1].running_mean.clone(), int(net[1].num_batches_tracked)
    net.train()
    freeze_batch_norm(net)
    x = torch.randn(2, 3, 9)
    train_out = net[1](net[0](x))
    train_out.sum().backward()
    assert net[1].weight.grad is not None, "the affine parameters still learn"
    assert torch.equal(net[1].running_mean, before[0]) and int(net[1].num_batches_tracked) == before[1]
    net.eval()
    assert torch.equal(train_out, net[1](net[0](x)))


def test_freeze_leaves_dropout_in_train_mode() -> None:
    net = _net().train()
    freeze_batch_norm(net)
    assert net[2].training and not net[1].training


def test_finds_our_cpu_sync_batch_norm_too() -> None:
    net = nn.Sequential(CpuSyncBatchNorm1d(4), nn.BatchNorm1d(4))
    assert len(batch_norm_layers(net)) == 2


def test_config_field_must_be_positive() -> None:
    base = {"model": {"preset": "quartznet_5x3"}, "data": {"train_manifests": [{"path": "t.json"}]}}
    assert config_from_dict({**base, "run": {"freeze_bn_last_epochs": 3}}).run.freeze_bn_last_epochs == 3
    with pytest.raises(ValueError, match="freeze_bn_last_epochs"):
        config_from_dict({**base, "run": {"freeze_bn_last_epochs": 0}})


def _tracked_after_training(tmp_path, rows, freeze_last: int | None) -> set[int]:
    """Runs the training loop in-process (no Ray) for 2 epochs of 2 batches; BN batch counts after."""
    from safetensors.torch import load_file

    from tests.training.conftest import write_config, write_manifest
    from training.config import load_config
    from training.loop import train_loop_per_worker
    from training.run import WorkerConfig

    folder = tmp_path / f"freeze-{freeze_last}"
    train = write_manifest(folder / "train.json", rows)
    run = {"output_dir": str(folder / "out"), "registry": str(folder / "registry"), "publish_name": "tiny",
           "log_every_steps": 1, "freeze_bn_last_epochs": freeze_last}
    data = {"train_manifests": [{"path": str(train)}], "batch_size": 2, "num_buckets": 1, "num_loader_workers": 0}
    optim = {"name": "adamw", "lr": 0.001, "epochs": 2, "warmup_steps": 0}
    cfg = load_config(write_config(folder, train, data=data, optim=optim, run=run), [])
    train_loop_per_worker(WorkerConfig(cfg).loop_config())
    last = sorted((folder / "out" / "checkpoints").iterdir())[-1]
    weights = load_file(last / "model.safetensors")
    return {int(v) for k, v in weights.items() if k.endswith("num_batches_tracked")}


def test_training_loop_freezes_statistics_for_the_last_epochs(an4_pick, tmp_path) -> None:
    rows = an4_pick(4)  # batch_size 2 -> 2 batches per epoch
    # Plain BatchNorm counts every training batch: 2 epochs x 2 batches.
    assert _tracked_after_training(tmp_path, rows, None) == {4}
    # Frozen for the last epoch: the statistics are the recalibration pass's 2 batches, never updated after.
    assert _tracked_after_training(tmp_path, rows, 1) == {2}
