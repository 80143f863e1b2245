"""Training across nodes on a real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``:
a head and a worker node, each with its own raylet), and surviving the loss of the worker node.

`asr train --address` joins the cluster from a subprocess, as a user's driver would. The same
tiny recipe (2 workers, SyncBN on, fixed seeds) runs with both workers on one node
(STRICT_PACK), one worker per node (STRICT_SPREAD), and one per node with the worker node's
raylet SIGKILLed mid-epoch (SPREAD, ``run.max_failures``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model.audio import decode_audio
from model.checkpoint import load_model
from model.registry import Registry
from tests.training.conftest import write_config, write_manifest
from training.sampler import DurationBucketSampler

REPO_ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 3
KILLED_EPOCHS = 8  # long enough that the kill, sent at the first checkpoint, lands well before the end
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def cluster():
    """Head (3 CPUs: room for both workers when the worker node is gone) and a 1-CPU worker node."""
    from ray.cluster_utils import Cluster

    # Node death noticed within ~3 s instead of Ray's default ~30 s, so the restart test is quick.
    system = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False,
                                                            "_system_config": system})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    cluster.shutdown()


def _train(config: Path, address: str, log: Path, *sets: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, "-m", "cli.main", "train", str(config), "--address", address]
    for item in sets:
        args += ["--set", item]
    with open(log, "w") as out:
        return subprocess.Popen(args, cwd=config.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path) -> None:
    try:
        code = proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log.read_text()[-4000:]


def _config(tmp_path: Path, rows, name: str, epochs: int = EPOCHS, **run) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    train = write_manifest(folder / "train.json", rows)
    val = write_manifest(folder / "val.json", rows[:2])
    return write_config(folder, train, val, sync_bn=True, optim={"epochs": epochs},
                        scaling={"num_workers": 2, "cpus_per_worker": 1},
                        run={"output_dir": str(folder / "out"), "registry": str(tmp_path / "registry"),
                             "publish_name": name, "log_every_steps": 1, **run})


def _published(tmp_path: Path, name: str) -> dict:
    return Registry(tmp_path / "registry").open(name)[1]


def test_two_nodes_train_like_one_and_survive_the_loss_of_a_node(cluster, an4_pick, tmp_path):
    head_cluster, worker_node = cluster
    rows = an4_pick(12)

    # 1. Both workers on one node, then one worker per node: the same arithmetic, so the same model.
    one = _config(tmp_path, rows, "one-node")
    _finish(_train(one, head_cluster.address, tmp_path / "one.log", "scaling.placement_strategy=STRICT_PACK"),
            tmp_path / "one.log")
    two = _config(tmp_path, rows, "two-nodes")
    _finish(_train(two, head_cluster.address, tmp_path / "two.log", "scaling.placement_strategy=STRICT_SPREAD"),
            tmp_path / "two.log")
    one_meta, two_meta = _published(tmp_path, "one-node"), _published(tmp_path, "two-nodes")
    assert len(set(one_meta["extra"]["attempts"][0]["nodes"])) == 1
    assert len(set(two_meta["extra"]["attempts"][0]["nodes"])) == 2 and len(two_meta["extra"]["nodes"]) == 2
    registry = Registry(tmp_path / "registry")
    audio = decode_audio(Path(rows[0]["audio_filepath"]), 16_000).samples
    a = load_model(registry, "one-node")[0].log_probs_batch([audio])[0]
    b = load_model(registry, "two-nodes")[0].log_probs_batch([audio])[0]
    # Two ranks' gradients are summed as a + b whichever node adds them, and every other operation runs
    # on the same data in the same order with one thread per worker: the runs are the same arithmetic.
    assert float(np.abs(a - b).max()) <= 1e-6
    assert one_meta["extra"]["global_steps"] == two_meta["extra"]["global_steps"]

    # 2. One worker per node, the worker node's raylet SIGKILLed mid-epoch: Ray Train restarts the
    #    group from the last checkpoint on the node that remains and the run publishes by itself.
    killed = _config(tmp_path, rows, "killed", KILLED_EPOCHS, max_failures=2, checkpoint_every_steps=2)
    out = killed.parent / "out"
    proc = _train(killed, head_cluster.address, tmp_path / "killed.log")
    run_dirs = lambda: list((out / "ray").glob("*/checkpoint_manager_snapshot.json"))  # noqa: E731
    deadline = time.monotonic() + TIMEOUT_S
    while not any(json.loads(p.read_text() or "{}").get("checkpoint_results") for p in run_dirs()
                  if p.stat().st_size):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.2)
    head_cluster.remove_node(worker_node, allow_graceful=False)  # SIGKILL: raylet, its workers, the lot
    _finish(proc, tmp_path / "killed.log")

    meta = _published(tmp_path, "killed")
    attempts = meta["extra"]["attempts"]
    assert len(attempts) == 2, attempts
    assert attempts[1]["restarted_after_failure"] and attempts[1]["lost_nodes"], attempts
    assert set(attempts[1]["lost_nodes"]) <= set(attempts[0]["nodes"])
    per_epoch = len(DurationBucketSampler([r["duration"] for r in rows], batch_size=2, num_buckets=4, seed=0,
                                          world_size=2))
    resumed_step = attempts[1]["global_step"]
    # From a checkpoint (every 2 steps, and at each epoch's end), not from zero, and before the end.
    assert 0 < resumed_step < KILLED_EPOCHS * per_epoch
    assert resumed_step % 2 == 0 or resumed_step % per_epoch == 0
    assert resumed_step == attempts[1]["epoch"] * per_epoch + attempts[1]["batches_done"]
    # Every optimiser step of every epoch counted once across the restart: none twice, none skipped.
    assert meta["extra"]["global_steps"] == KILLED_EPOCHS * per_epoch
    assert two_meta["extra"]["global_steps"] == EPOCHS * per_epoch
    assert "resumed at epoch" in (tmp_path / "killed.log").read_text()

