"""Acceptance: an `asr train` run SIGKILLed after its first checkpoint continues from that checkpoint
when re-run with the same run name and output_dir.

Two ways to die: "shared" kills the driver of a run on a Ray instance that survives (a cluster
via RAY_ADDRESS; Ray then ends the job's workers), "local" kills a plain `asr train` together
with the local Ray it started (gcs, raylet, every worker). "local" starts Ray twice in
subprocesses, which takes minutes on a busy 2-core machine, so it is marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from model.registry import Registry
from tests.training.conftest import (isolated_env, kill_run, shared_env, wait_for_free_cpus, write_config,
                                     write_manifest)
from training.sampler import DurationBucketSampler

EPOCHS = 4
RUN_NAME = "resume"
TIMEOUT_S = 600


def _asr_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("asr")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "cli.main", *args]


def _registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints Ray Train has registered in its run snapshot (what a restart restores from)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0
    return len(snapshot.get("checkpoint_results") or [])


@pytest.mark.parametrize("ray_mode", ["shared", pytest.param("local", marks=pytest.mark.slow)])
def test_killed_run_resumes_from_its_checkpoint(ray_mode: str, request, an4_pick, tmp_path: Path) -> None:
    if ray_mode == "shared":
        address = request.getfixturevalue("ray_cluster")

        def make_env() -> dict[str, str]:
            return shared_env(uuid.uuid4().hex, address)
    else:
        def make_env() -> dict[str, str]:
            return isolated_env(uuid.uuid4().hex)

    rows = an4_pick(12)
    train = write_manifest(tmp_path / "train.json", rows)
    val = write_manifest(tmp_path / "val.json", rows[:2])
    output_dir = tmp_path / "out"
    # Mid-epoch checkpoints too (every 4 steps), so the restart may also exercise skip_batches.
    # Intermediate CTC is on so the restart must restore its training-only head as well.
    config = write_config(tmp_path, train, val, optim={"epochs": EPOCHS}, loss={"inter_ctc_weight": 0.3},
                          run={"output_dir": str(output_dir), "registry": str(tmp_path / "registry"),
                               "publish_name": "tiny-resume", "log_every_steps": 1,
                               "checkpoint_every_steps": 4})
    command = _asr_command("train", str(config), "--run-name", RUN_NAME)
    run_dir = output_dir / "ray" / RUN_NAME
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"

    env = make_env()
    with open(log1, "w") as out:
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S  # generous: Ray starts slowly on a loaded machine
        while _registered_checkpoints(run_dir) == 0:
            assert first.poll() is None, f"run 1 ended before its first checkpoint:\n{log1.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint in {TIMEOUT_S} s:\n{log1.read_text()[-3000:]}"
            time.sleep(0.1)
        assert first.poll() is None, "run 1 finished before it could be killed; raise EPOCHS"
    finally:
        kill_run(first.pid, env)  # the whole run: driver, gcs/raylet and every Ray worker
        first.wait(timeout=30)
    assert first.returncode == -9
    if ray_mode == "shared":
        wait_for_free_cpus()  # the killed job's TrainController and worker are gone
    lines_before = len((output_dir / "metrics.jsonl").read_text().splitlines())
    assert not list((tmp_path / "registry").glob("tiny-resume/*")), "nothing is published before the end"

    env = make_env()
    with open(log2, "w") as out:
        second = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = second.wait(timeout=TIMEOUT_S)
    finally:
        kill_run(second.pid, env)  # leftovers of a hung or failed run; normally there are none
    text = log2.read_text()
    assert code == 0, text[-3000:]

    resumed = [line for line in text.splitlines() if "[train] resumed at epoch" in line]
    assert resumed, f"the restart did not resume:\n{text[-3000:]}"
    words = resumed[0].split("[train] resumed at epoch", 1)[1].split()
    resumed_epoch, resumed_batch = int(words[0]), int(words[2])
    assert (resumed_epoch, resumed_batch) != (0, 0)

    # Same batches per epoch as the workers' sampler (1 rank, batch 2, 4 buckets).
    durations = [row["duration"] for row in rows]
    per_epoch = len(DurationBucketSampler(durations, batch_size=2, num_buckets=4, seed=0))
    ref, meta = Registry(tmp_path / "registry").open("tiny-resume")
    assert ref.version == 1
    extra = meta["extra"]
    assert extra["epochs"] == EPOCHS
    # Counted once across the restart: neither restarted from zero nor any step done twice.
    assert extra["global_steps"] == EPOCHS * per_epoch
    assert [h["epoch"] for h in extra["history"]] == list(range(1, EPOCHS + 1))

    rows_after = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    second_run = rows_after[lines_before:]
    steps = [row["step"] for row in second_run if row["kind"] == "step"]
    epochs = [row["epoch"] for row in second_run if row["kind"] == "epoch"]
    expected_first_step = resumed_epoch * per_epoch + resumed_batch + 1
    assert steps == list(range(expected_first_step, EPOCHS * per_epoch + 1))
    assert epochs == list(range(resumed_epoch + 1, EPOCHS + 1))
