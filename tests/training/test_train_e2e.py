"""Acceptance: `asr train` on a tiny model with 2 Ray workers (gloo, CPU sync BN) publishes a
version that `asr transcribe` loads; the run leaves metadata, metrics.jsonl, TensorBoard files and a plot.
The run uses self-conditioned CTC, so its model-owned heads go through DDP, sync BN and publishing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cli.main import main
from model.checkpoint import load_model
from model.registry import Registry
from model.vocabulary import Vocabulary
from tests.training.conftest import HOLDOUT_SPEAKER, write_config, write_manifest
from training.config import load_config
from training.sampler import DurationBucketSampler
from training.datasets import load_splits


def _summary_line(text: str) -> dict:
    """The JSON summary `asr train` prints last (Ray's worker log lines are interleaved)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{") and '"published"' in line:
            return json.loads(line)
    raise AssertionError(f"no summary line in the output:\n{text[-3000:]}")


def test_two_worker_run_publishes_a_loadable_model(ray_cluster, an4_pick, tmp_path: Path, capfd) -> None:
    train_rows = an4_pick(10, exclude=HOLDOUT_SPEAKER) + an4_pick(2, speaker=HOLDOUT_SPEAKER)
    manifest = write_manifest(tmp_path / "train.json", train_rows)
    config = write_config(tmp_path, manifest, data={"holdout_speakers": [HOLDOUT_SPEAKER]},
                          optim={"epochs": 2}, sync_bn=True, loss={"inter_ctc_weight": 0.3, "self_conditioning": True},
                          run={"output_dir": str(tmp_path / "out"), "publish_name": "tiny-e2e",
                               "log_every_steps": 1})
    registry_dir, png = tmp_path / "registry", tmp_path / "curves.png"

    code = main(["--registry", str(registry_dir), "train", str(config), "--run-name", "e2e",
                 "--set", "scaling.num_workers=2", "--set", "scaling.cpus_per_worker=1", "--plot", str(png)])
    out = capfd.readouterr().out
    assert code == 0, out[-3000:]
    summary = _summary_line(out)
    assert summary["published"] == "tiny-e2e@1"

    registry = Registry(registry_dir)
    ref, meta = registry.open("tiny-e2e")
    assert ref.version == 1 and meta["kind"] == "model" and meta["source"] == "trained"
    assert meta["parent_version"] is None
    extra = meta["extra"]
    # The config as the workers saw it, with the CLI overrides applied.
    assert extra["train_config"]["scaling"]["num_workers"] == 2
    assert extra["train_config"]["sync_bn"] is True
    assert extra["train_config"]["model"]["blocks"][0]["filters"] == 32
    assert extra["train_config"]["loss"]["self_conditioning"] is True
    assert extra["train_manifests"] == [str(manifest)] and extra["val_manifests"] == []
    assert extra["holdout_speakers"] == [HOLDOUT_SPEAKER]
    assert extra["epochs"] == 2 and len(extra["history"]) == 2
    assert extra["wall_time_s"] >= 0 and extra["git_commit"]
    for key in ("val_wer", "val_cer"):
        assert math.isfinite(meta["metrics"][key]) and meta["metrics"][key] >= 0
    assert 1 <= meta["metrics"]["best_epoch"] <= 2

    # Two DDP ranks share each epoch's batches, so the step count is the 2-rank shard's length.
    cfg = load_config(config, ["scaling.num_workers=2"])
    splits = load_splits(cfg, Vocabulary(tuple(cfg.model.labels)), log=False)
    assert len(splits.val) == 2 and len(splits.train) == 10
    steps = 0
    for epoch in range(2):
        sampler = DurationBucketSampler([e.duration_s for e in splits.train], batch_size=2, num_buckets=4,
                                        seed=0, rank=0, world_size=2)
        sampler.set_epoch(epoch)
        steps += len(sampler)
    assert extra["global_steps"] == steps

    output_dir = tmp_path / "out"
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows if row["kind"] == "epoch"]
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert all("val_wer" in row and "audio_s_per_s" in row for row in epochs)
    assert len([row for row in rows if row["kind"] == "step"]) == steps
    assert list((output_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The published version is what `asr transcribe` serves.
    code = main(["--registry", str(registry_dir), "transcribe", train_rows[0]["audio_filepath"],
                 "--model", "tiny-e2e", "--json"])
    captured = capfd.readouterr()
    out = captured.out
    assert code == 0, captured.err[-2000:]
    result = json.loads(out[out.index("{"):])
    assert result["model"] == "tiny-e2e@1" and len(result["results"]) == 1
    assert load_model(registry, "tiny-e2e")[0].network.config.self_conditioning == (1,)


@pytest.mark.parametrize("sync_bn", [True, False])
def test_two_workers_recalibrate_then_freeze(ray_cluster, an4_pick, tmp_path: Path, capfd, sync_bn: bool) -> None:
    """The DDP path of run.freeze_bn_last_epochs: the recalibration pass keeps both ranks' collectives
    in step (the CPU sync BN's all-reduces, DDP's buffer broadcasts), and the published statistics
    come from that pass only."""
    manifest = write_manifest(tmp_path / "train.json", an4_pick(8))
    config = write_config(tmp_path, manifest, optim={"epochs": 2}, sync_bn=sync_bn,
                          run={"output_dir": str(tmp_path / "out"), "publish_name": "tiny-freeze",
                               "freeze_bn_last_epochs": 1})
    code = main(["--registry", str(tmp_path / "registry"), "train", str(config), "--run-name", "freeze",
                 "--set", "scaling.num_workers=2", "--set", "scaling.cpus_per_worker=1"])
    out = capfd.readouterr().out
    assert code == 0, out[-3000:]
    assert "BatchNorm statistics recalibrated over" in out

    model, _, _ = load_model(Registry(tmp_path / "registry"), "tiny-freeze")
    cfg = load_config(config, [])
    splits = load_splits(cfg, Vocabulary(tuple(cfg.model.labels)), log=False)
    sampler = DurationBucketSampler([e.duration_s for e in splits.train], batch_size=2, num_buckets=4,
                                    seed=0, rank=0, world_size=2)
    sampler.set_epoch(1)
    tracked = {int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    # Counted once per recalibration batch of rank 0's shard; the frozen epoch added none.
    assert tracked == {len(sampler)}
