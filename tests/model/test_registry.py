"""Tests for model.registry: naming, resolution, integrity, concurrent and interrupted publishes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from model.registry import (
    IntegrityError,
    InvalidNameError,
    ModelRef,
    NotFoundError,
    Registry,
    RegistryError,
    default_registry_root,
    parse_spec,
    user_registry_root,
    validate_name,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="needs fork, FIFOs and SIGKILL")


def _ctx() -> multiprocessing.context.BaseContext:
    # fork: children inherit the test's sys.path and monkeypatches without re-importing the test.
    return multiprocessing.get_context("fork")


def _publish_weights(reg: Registry, name: str, payload: bytes = b"weights", **kw) -> ModelRef:
    return reg.publish(name, {"model.safetensors": payload, "config.json": '{"x": 1}'.encode()}, **kw)


def _wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for condition")
        time.sleep(0.01)


# -- names and specs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["an4", "QuartzNet15x5", "a", "lm_en-v1.2", "x" * 64])
def test_valid_names_accepted(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "a..b", "-x", "a b", "a@1", "x" * 65, "/abs"]
)
def test_invalid_names_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)


def test_parse_spec() -> None:
    assert parse_spec("an4") == ("an4", None)
    assert parse_spec("an4@latest") == ("an4", None)
    assert parse_spec("an4@3") == ("an4", 3)
    for bad in ["an4@0", "an4@-1", "an4@x", "an4@", "an4@03", "../x@1", "@1"]:
        with pytest.raises(InvalidNameError):
            parse_spec(bad)


def test_default_root_is_the_env_then_the_working_directorys_then_the_users(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    monkeypatch.setenv("ASR_REGISTRY", str(tmp_path / "reg"))
    assert default_registry_root() == tmp_path / "reg"
    assert Registry().root == tmp_path / "reg"
    monkeypatch.delenv("ASR_REGISTRY")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_registry_root() == Path("registry")  # neither exists: the errors say where to look
    with pytest.raises(NotFoundError) as error:
        Registry().resolve("an4-quartznet")
    assert "does not exist" in str(error.value) and str(user_registry_root()) in str(error.value)
    user_registry_root().mkdir(parents=True)
    assert user_registry_root() == tmp_path / "data" / "quartznet-asr" / "registry" == default_registry_root()
    (tmp_path / "registry").mkdir()
    assert default_registry_root() == Path("registry")  # a checkout's own comes first


# -- publish / resolve / list ----------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    assert reg.list() == [] and reg.names() == [] and reg.versions("an4") == []
    assert not (tmp_path / "reg").exists(), "root must be created lazily"

    src = tmp_path / "config.json"
    src.write_text('{"sample_rate": 16000}')
    ref = reg.publish(
        "an4",
        {"model.safetensors": b"\x00\x01weights", "config.json": src},
        metrics={"wer": 0.25},
        extra={"epochs": 3},
    )
    assert ref == ModelRef("an4", 1, tmp_path / "reg" / "an4" / "1")
    assert str(ref) == "an4@1"
    assert (ref.path / "model.safetensors").read_bytes() == b"\x00\x01weights"
    assert (ref.path / "config.json").read_text() == '{"sample_rate": 16000}'

    meta = json.loads((ref.path / "metadata.json").read_text())
    assert meta["name"] == "an4" and meta["version"] == 1
    assert meta["kind"] == "model" and meta["source"] == "trained"
    assert meta["metrics"] == {"wer": 0.25} and meta["extra"] == {"epochs": 3}
    assert meta["parent_version"] is None
    assert meta["created_at"].endswith("+00:00")
    assert meta["files"]["model.safetensors"]["bytes"] == 9
    assert len(meta["files"]["config.json"]["sha256"]) == 64

    opened, opened_meta = reg.open("an4")
    assert opened == ref and opened_meta == meta == reg.metadata(ref)

    [entry] = reg.list()
    assert entry["name"] == "an4" and entry["version"] == 1 and entry["kind"] == "model"
    assert entry["metrics"] == {"wer": 0.25} and entry["source"] == "trained"
    assert "error" not in entry
    assert not list((tmp_path / "reg" / ".tmp").iterdir()), "staging folder must be gone"


def test_resolution_and_kinds(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for i in range(3):
        _publish_weights(reg, "an4", payload=bytes([i]), parent_version=i or None)
    reg.publish("en-lm", {"lm.binary": b"kenlm", "unigrams.txt": b"a\nb\n"}, kind="lm", source="imported")

    assert reg.versions("an4") == [1, 2, 3]
    assert reg.resolve("an4").version == 3
    assert reg.resolve("an4@latest").version == 3
    assert reg.resolve("an4@2") == ModelRef("an4", 2, tmp_path / "an4" / "2")
    assert reg.metadata(reg.resolve("an4@2"))["parent_version"] == 1
    assert reg.names() == ["an4", "en-lm"]
    assert reg.names(kind="lm") == ["en-lm"]
    assert reg.names(kind="model") == ["an4"]
    assert [(e["name"], e["version"]) for e in reg.list()] == [("an4", 1), ("an4", 2), ("an4", 3), ("en-lm", 1)]
    assert reg.open("en-lm@1")[1]["kind"] == "lm"


def test_unknown_name_and_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(NotFoundError, match="available: none"):
        reg.resolve("an4")
    _publish_weights(reg, "an4")
    _publish_weights(reg, "an4")
    with pytest.raises(NotFoundError, match=r"'nope'.*available: an4"):
        reg.resolve("nope")
    with pytest.raises(NotFoundError, match=r"'an4@7'.*available versions: 1, 2"):
        reg.open("an4@7")
    with pytest.raises(InvalidNameError):
        reg.resolve("../an4")


def test_publish_refuses_bad_input(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="missing.bin"):
        reg.publish("an4", {"model.safetensors": tmp_path / "missing.bin"})
    with pytest.raises(RegistryError, match="kind"):
        _publish_weights(reg, "an4", kind="tokenizer")
    with pytest.raises(RegistryError, match="JSON"):
        _publish_weights(reg, "an4", metrics={"wer": object()})
    for bad_file in ["../evil", "a/b", "metadata.json", ".hidden", ""]:
        with pytest.raises(InvalidNameError):
            reg.publish("an4", {bad_file: b"x"})
    for bad_name in ["..", "../x", "a/b", ""]:
        with pytest.raises(InvalidNameError):
            _publish_weights(reg, bad_name)
    assert reg.versions("an4") == []
    assert not list((tmp_path / ".tmp").iterdir()), "failed publishes must not leave staging folders"
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "a").exists()


def test_list_reports_broken_metadata_without_raising(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    _publish_weights(reg, "an4")
    ref = _publish_weights(reg, "an4")
    (ref.path / "metadata.json").write_text("{not json")
    entries = reg.list()
    assert "error" not in entries[0]
    assert entries[1]["version"] == 2 and "metadata.json is unreadable" in entries[1]["error"]
    with pytest.raises(IntegrityError):
        reg.open("an4")


# -- integrity ---------------------------------------------------------------------------------


def test_tampered_file_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    ref = _publish_weights(reg, "an4", payload=b"A" * 1000)
    weights = ref.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[500] ^= 0x01  # same size, one bit off: only the checksum can catch it
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"^model 'an4@1': checksum mismatch for model\.safetensors"):
        reg.open("an4")
    # Callers that accept the risk can still load it.
    assert reg.open("an4", verify=False)[0] == ref


def test_deleted_file_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    ref = _publish_weights(reg, "an4")
    (ref.path / "config.json").unlink()
    with pytest.raises(IntegrityError, match="config.json is missing"):
        reg.open("an4@1")


def test_unexpected_file_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    ref = _publish_weights(reg, "an4")
    (ref.path / "other.safetensors").write_bytes(b"sneaky")
    with pytest.raises(IntegrityError, match="unexpected files.*other.safetensors"):
        reg.verify(ref)


def test_metadata_from_another_version_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    _publish_weights(reg, "an4")
    ref2 = _publish_weights(reg, "an4")
    meta = json.loads((ref2.path / "metadata.json").read_text())
    meta["version"] = 1
    (ref2.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="describes 'an4@1'"):
        reg.open("an4@2")
    meta["version"] = 2
    meta["files"]["../../outside"] = {"sha256": "0" * 64, "bytes": 0}
    (ref2.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="bad entry for file '../../outside'"):
        reg.open("an4@2")


# -- concurrency and crashes ---------------------------------------------------------------------


def _concurrent_publisher(root: str, worker: int, count: int, barrier, results) -> None:
    reg = Registry(root)
    barrier.wait()
    for i in range(count):
        ref = _publish_weights(reg, "shared", payload=f"{worker}-{i}".encode())
        results.put((worker, i, ref.version))


@posix_only
def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    workers, per_worker = 4, 6
    ctx = _ctx()
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_concurrent_publisher, args=(str(tmp_path), w, per_worker, barrier, results))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    claimed = [results.get(timeout=60) for _ in range(workers * per_worker)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    total = workers * per_worker
    assert sorted(v for _, _, v in claimed) == list(range(1, total + 1))
    reg = Registry(tmp_path)
    assert reg.versions("shared") == list(range(1, total + 1))
    payload_by_version = {v: f"{w}-{i}".encode() for w, i, v in claimed}
    for version in reg.versions("shared"):
        ref, meta = reg.open(f"shared@{version}")
        assert meta["version"] == version
        assert (ref.path / "model.safetensors").read_bytes() == payload_by_version[version]
    assert not list((tmp_path / ".tmp").iterdir())


def _publish_from_fifo(root: str, fifo: str) -> None:
    Registry(root).publish("an4", {"config.json": b"{}", "model.safetensors": fifo})


def _publish_stalled_before_claim(root: str, ready) -> None:
    def stall(*_args, **_kwargs):
        ready.set()
        time.sleep(3600)

    os.rename = stall  # only this forked child sees it
    _publish_weights(Registry(root), "an4")


@posix_only
@pytest.mark.parametrize("stage", ["while copying weights", "just before claiming a version"])
def test_killed_publish_leaves_no_version(tmp_path: Path, stage: str) -> None:
    reg = Registry(tmp_path)
    ctx = _ctx()
    if stage == "while copying weights":
        # The child copies from a FIFO we never close, so it is provably mid-copy when killed.
        fifo = tmp_path / "weights.fifo"
        os.mkfifo(fifo)
        child = ctx.Process(target=_publish_from_fifo, args=(str(tmp_path), str(fifo)))
        child.start()
        writer = open(fifo, "wb")  # blocks until the child opens it for reading
        # More than the copy chunk (1 MiB), so at least one chunk reaches the staged file.
        writer.write(b"W" * (3 << 20))
        writer.flush()

        def partial_written() -> bool:
            parts = list((tmp_path / ".tmp").glob("*/model.safetensors"))
            return bool(parts) and parts[0].stat().st_size > 0

        _wait_for(partial_written)
    else:
        ready = ctx.Event()
        child = ctx.Process(target=_publish_stalled_before_claim, args=(str(tmp_path), ready))
        child.start()
        assert ready.wait(timeout=20)
        writer = None

    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=20)
    assert child.exitcode == -signal.SIGKILL
    if writer is not None:
        try:
            writer.close()
        except BrokenPipeError:
            pass  # the reader is dead; nothing to deliver

    assert reg.versions("an4") == []
    assert reg.names() == [] and reg.list() == []
    with pytest.raises(NotFoundError):
        reg.resolve("an4")
    assert list((tmp_path / ".tmp").iterdir()), "the dead publish's staging folder stays hidden in .tmp"

    ref = _publish_weights(reg, "an4")
    assert ref.version == 1
    assert reg.open("an4")[1]["version"] == 1


def test_stale_staging_folders_are_cleaned(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    stale = tmp_path / ".tmp" / "dead"
    fresh = tmp_path / ".tmp" / "alive"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(stale / "model.safetensors", (two_hours_ago, two_hours_ago))
    os.utime(stale, (two_hours_ago, two_hours_ago))
    _publish_weights(reg, "an4")
    assert not stale.exists()
    assert fresh.exists(), "a staging folder touched recently may belong to a live publish"
    assert reg.names() == ["an4"]


def _record_many(root: str, version: int, times: int) -> None:
    for _ in range(times):
        Registry(root).record_active("m", version, action="activate", by=f"writer-{version}")


@posix_only
def test_concurrent_writers_of_the_serving_state_lose_no_entry(tmp_path: Path) -> None:
    """Replicas and the CLI may record at once: the lock makes each read-modify-write whole."""
    reg = Registry(tmp_path)
    for _ in range(4):
        _publish_weights(reg, "m")
    assert reg.serving_state("m") == {"active": None, "canary": None, "history": []}
    writers = [_ctx().Process(target=_record_many, args=(str(tmp_path), version, 10)) for version in (1, 2, 3, 4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    state = reg.serving_state("m")
    assert len(state["history"]) == 40 and state["active"] == state["history"][-1]["version"]
    # Each entry's "previous" is the entry before it: no two writers read the same state.
    assert [e["previous"] for e in state["history"][1:]] == [e["version"] for e in state["history"][:-1]]
    with pytest.raises(NotFoundError):
        reg.record_active("m", 9, action="activate")
    (tmp_path / "m" / "serving.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="serving.json is unreadable"):
        reg.serving_state("m")
