"""Acceptance: `asr train` rejects bad configs with exit 2 and one line naming the field, and a
manifest with bad lines and unreadable audio trains anyway, skipping and counting them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import main
from tests.training.conftest import write_config, write_manifest


@pytest.fixture
def good_config(an4_pick, tmp_path: Path) -> Path:
    rows = an4_pick(4)
    return write_config(tmp_path, write_manifest(tmp_path / "train.json", rows),
                        write_manifest(tmp_path / "val.json", rows[:1]))


@pytest.mark.parametrize("overrides, field, problem", [
    (["optim.lrr=0.1"], "optim.lrr", "Extra inputs are not permitted"),
    (["optim.epochs=many"], "optim.epochs", "valid integer"),
    (["scaling.num_workers=0"], "scaling.num_workers", "greater than or equal to 1"),
    (["model.blocks=null", "model.preset=quartznet_9x9"], "model.preset", "unknown preset 'quartznet_9x9'"),
    (["data.train_manifests.0.path=missing.json"], "data.train_manifests.0.path", "manifest not found"),
    (["data.val_manifests.0.path=nowhere/val.json"], "data.val_manifests.0.path", "manifest not found"),
])
def test_bad_config_exits_2_naming_the_field(good_config: Path, capsys, overrides, field, problem) -> None:
    args = ["train", str(good_config)]
    for override in overrides:
        args += ["--set", override]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asr: error: "), captured.err
    assert field in lines[0] and problem in lines[0], lines[0]
    assert captured.out == ""


def test_bad_config_through_the_console_script(good_config: Path, tmp_path: Path) -> None:
    """The real process: exit status 2 and a single stderr line, before any Ray start."""
    script = Path(sys.executable).with_name("asr")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(good_config.read_text().replace("epochs: 1", "epochs: -3"))
    done = subprocess.run([*command, "train", str(bad_yaml)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "optim.epochs" in done.stderr and "greater than or equal to 1" in done.stderr
    assert not (tmp_path / "out").exists()


def test_unreadable_manifest_lines_and_audio_are_skipped_and_counted(ray_cluster, an4_pick, tmp_path: Path,
                                                                     capfd) -> None:
    rows = an4_pick(8)
    junk = []
    # Non-audio bytes under .wav names. The two shortest entries fill one batch of their own
    # (the all-unreadable path: a zero-loss step), the third shares a batch with a real clip.
    for name, duration in (("junk-a.wav", 0.30), ("junk-b.wav", 0.31), ("junk-c.wav", 0.32)):
        path = tmp_path / name
        path.write_bytes(b"this is not audio " * 200)
        junk.append({"audio_filepath": str(path), "duration": duration, "text": "yes"})
    bad_lines = ['{"audio_filepath": "broken.wav", "duration": 1.0, "text": "no"',  # invalid JSON
                 json.dumps({"audio_filepath": str(tmp_path / "gone.wav"), "duration": 1.0, "text": "go"})]
    train = write_manifest(tmp_path / "train.json", rows + junk, extra_lines=bad_lines)
    val = write_manifest(tmp_path / "val.json", rows[:2])
    # 11 readable entries in 6 duration buckets of 2, 2, 2, 2, 2, 1: junk-a+b, junk-c + the shortest clip, ...
    config = write_config(tmp_path, train, val, data={"batch_size": 2, "num_buckets": 6}, optim={"epochs": 2},
                          run={"output_dir": str(tmp_path / "out"), "publish_name": "tiny-bad",
                               "log_every_steps": 1})

    code = main(["--registry", str(tmp_path / "registry"), "train", str(config), "--run-name", "bad"])
    out = capfd.readouterr().out
    assert code == 0, out[-3000:]

    rows_logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in rows_logged if row["kind"] == "epoch"]
    assert [row["epoch"] for row in epochs] == [1, 2]  # never fatal halfway through an epoch
    assert [row["skipped_unreadable"] for row in epochs] == [3, 3]
    steps = [row for row in rows_logged if row["kind"] == "step"]
    assert len(steps) == 2 * 6 and all(row["loss"] == row["loss"] for row in steps)  # no NaN loss

    meta = json.loads(next((tmp_path / "registry" / "tiny-bad").glob("*/metadata.json")).read_text())
    assert meta["extra"]["epochs"] == 2

    # The workers' console lines reach the driver asynchronously: give them a moment.
    expected = ["[data] skipped", "invalid JSON", "audio file not found", "skipped 2 bad manifest lines",
                "skipped 3 unreadable"]
    deadline = time.monotonic() + 20
    while not all(text in out for text in expected) and time.monotonic() < deadline:
        time.sleep(0.5)
        out += capfd.readouterr().out
    missing = [text for text in expected if text not in out]
    assert not missing, f"not in the output: {missing}\n{out[-3000:]}"
