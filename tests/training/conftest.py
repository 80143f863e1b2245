"""Fixtures for the training acceptance tests: tiny AN4 manifests, tiny configs and an isolated Ray.

Every Ray instance these tests start is a *separate local* one with its own temp dir, so a
Ray cluster already running on the machine (another training job) is never joined, stopped
or touched: in-process runs share one session-scoped local instance (``ray_cluster``), and
subprocess runs (``asr train`` in ``test_resume``) start their own via :func:`isolated_env`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from model.vocabulary import ENGLISH_LABELS as DEFAULT_LABELS

# Three tiny blocks (stride 2 -> 20 ms frames): a forward pass over a 2 s clip takes milliseconds.
TINY_BLOCKS = [
    {"filters": 32, "repeat": 1, "kernel": 11, "stride": 2, "residual": False},
    {"filters": 32, "repeat": 2, "kernel": 7, "residual": True},
    {"filters": 64, "repeat": 1, "kernel": 1, "residual": False, "separable": False},
]
HOLDOUT_SPEAKER = "fjdn"  # an AN4 training speaker with several short utterances


@pytest.fixture(scope="session")
def an4_short(speech_root: Path) -> list[dict[str, Any]]:
    """Short (<= 1.6 s) AN4 training utterances, absolute paths, in manifest order."""
    rows = []
    with open(speech_root / "an4_train.json", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["duration"] <= 1.6:
                rows.append({**row, "audio_filepath": str(speech_root / row["audio_filepath"])})
    return rows


@pytest.fixture(scope="session")
def an4_pick(an4_short: list[dict[str, Any]]):
    """``an4_pick(n, speaker=None, exclude=None)``: n short utterances from distinct speakers
    (or all from ``speaker``), deterministic."""

    def pick(n: int, speaker: str | None = None, exclude: str | None = None) -> list[dict[str, Any]]:
        out, seen = [], set()
        for row in an4_short:
            who = Path(row["audio_filepath"]).parent.name
            if speaker is not None and who != speaker:
                continue
            if who == exclude or (speaker is None and who in seen):
                continue
            seen.add(who)
            out.append(row)
            if len(out) == n:
                return out
        raise AssertionError(f"only {len(out)} short AN4 utterances match (wanted {n})")

    return pick


def write_manifest(path: Path, rows: list[dict[str, Any]], extra_lines: list[str] = ()) -> Path:
    """Writes a NeMo manifest (rows as JSON lines, then ``extra_lines`` verbatim)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row) for row in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_config(folder: Path, train: Path, val: Path | None = None, **sections: dict[str, Any]) -> Path:
    """A tiny-model training YAML in ``folder``; ``sections`` update the top-level sections."""
    cfg: dict[str, Any] = {
        "model": {"blocks": TINY_BLOCKS, "labels": list(DEFAULT_LABELS)},
        "data": {"train_manifests": [{"path": str(train)}],
                 "val_manifests": [{"path": str(val)}] if val else [],
                 "batch_size": 2, "num_buckets": 4, "num_loader_workers": 0},
        "optim": {"name": "adamw", "lr": 0.001, "epochs": 1, "warmup_steps": 0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "run": {"output_dir": str(folder / "out"), "registry": str(folder / "registry"),
                "publish_name": "tiny", "log_every_steps": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def short_tmpdir(prefix: str) -> str:
    """A short /tmp folder: Ray's unix socket paths live under its temp dir (107-byte limit)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One separate local Ray instance (2 CPUs) for the in-process ``run_training`` / ``asr train``
    calls; yields its GCS address (subprocess drivers join it with RAY_ADDRESS, see :func:`shared_env`).

    ``run_training`` sees ``ray.is_initialized()`` and reuses it. ``address="local"`` and a
    private ``_temp_dir`` make sure it never attaches to (or shares /tmp/ray with) another job.
    """
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # someone else's instance in this process: use it as is
        yield ray.get_runtime_context().gcs_address
        return
    temp_dir = short_tmpdir("asrt-ray-")
    try:
        for attempt in (1, 2):
            try:
                ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True,
                         _temp_dir=temp_dir, configure_logging=False)
                break
            except Exception as exc:  # Ray's node start has a fixed 30 s deadline: one retry when starved
                if attempt == 2 or "timed out during startup" not in str(exc):
                    raise
        yield ray.get_runtime_context().gcs_address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_free_cpus(timeout_s: float = 120.0) -> None:
    """Waits until every CPU of the shared instance is free again (a killed driver's workers are gone)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources().get("CPU", 0.0):
        if time.monotonic() > deadline:
            raise AssertionError(f"Ray resources still held after {timeout_s} s: {ray.available_resources()}")
        time.sleep(0.5)


# ---- subprocess runs (their own local Ray) ----

TAG_ENV = "ASR_TEST_RUN_TAG"


def isolated_env(tag: str) -> dict[str, str]:
    """Environment for an ``asr train`` subprocess that starts its own local Ray.

    RAY_ADDRESS is removed (it would attach to a running cluster), RAY_TMPDIR points at a fresh
    short folder (so /tmp/ray and its ``session_latest`` stay untouched) and ``TAG_ENV`` marks
    every process of the run (Ray's raylet and workers inherit it), for :func:`kill_run`.
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = short_tmpdir("asrt-sub-")
    env[TAG_ENV] = tag
    env["PYTHONUNBUFFERED"] = "1"
    return env


def shared_env(tag: str, address: str) -> dict[str, str]:
    """Environment for an ``asr train`` subprocess whose driver joins the ``ray_cluster`` instance."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}
    env["RAY_ADDRESS"] = address
    env[TAG_ENV] = tag
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pids_of_run(session_id: int, tag: str) -> list[int]:
    """Live processes that belong to one subprocess run: its session, or carrying its tag."""
    marker = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) == session_id:
                found.append(pid)
                continue
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if marker in handle.read().split(b"\0"):
                    found.append(pid)
        except (OSError, ProcessLookupError):
            continue
    return found


def kill_run(session_id: int, env: dict[str, str], timeout_s: float = 30.0) -> None:
    """SIGKILLs every process of one run (its process group, its session and tagged processes)
    and removes its Ray temp dir.

    Only processes started by the test's own subprocess are matched: those in the session it
    created (``start_new_session=True``) or with its unique tag (``env[TAG_ENV]``) in their
    environment.
    """
    try:
        _kill_all(session_id, env[TAG_ENV], timeout_s)
    finally:
        if "RAY_TMPDIR" in env and env["RAY_TMPDIR"].startswith("/tmp/asrt-sub-"):
            shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def _kill_all(session_id: int, tag: str, timeout_s: float) -> None:
    try:
        os.killpg(session_id, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while True:
        pids = [pid for pid in _pids_of_run(session_id, tag) if not _is_zombie(pid)]
        if not pids:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of the killed run survive: {pids}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
