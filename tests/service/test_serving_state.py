"""State that survives restarts: the registry records the active version, a restart serves it, a broken version
never keeps a server down, and an ensemble with a broken member is refused at activation."""

from __future__ import annotations

import json
import shutil

import pytest

from model import EnsembleRecognizer, publish_model
from service.engine import Engine
from service.model_slot import ModelLoadError
from tests.service.conftest import make_config, tiny_model
from tests.tiny_model import agreeing_copy

pytestmark = pytest.mark.anyio


@pytest.fixture()
def registry(three_versions):
    return three_versions


async def _started(registry, model: str = "tiny") -> Engine:
    return await Engine.start(make_config(registry.root, default_model=model))


async def test_a_restart_serves_the_version_last_activated_or_rolled_back_to(registry) -> None:
    engine = await _started(registry)
    assert engine.slot.active.key == ("tiny", 3)  # nothing recorded yet: the newest
    await engine.activate("tiny", 1, by="test")
    await engine.activate("tiny", 2)
    await engine.rollback()
    await engine.drain_and_stop(5)
    state = registry.serving_state("tiny")
    assert state["active"] == 1
    assert [(e["action"], e["version"], e["previous"]) for e in state["history"]] == [
        ("activate", 1, None), ("activate", 2, 1), ("rollback", 1, 2)]
    assert state["history"][0]["by"] == "test" and "@" in state["history"][1]["by"]

    restarted = await _started(registry)
    try:
        assert restarted.slot.active.key == ("tiny", 1) and restarted.startup_warnings == []
        assert (await restarted.rollback()).key == ("tiny", 2)  # the history outlives the process too
    finally:
        await restarted.drain_and_stop(5)


async def test_a_broken_newest_version_does_not_keep_the_server_down(registry) -> None:
    weights = registry.root / "tiny" / "3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # a corrupted copy: the checksum no longer matches
    engine = await _started(registry)
    try:
        assert engine.slot.active.key == ("tiny", 2)
        [warning] = engine.startup_warnings
        assert "tiny@3 was not served" in warning and "checksum" in warning
        assert str(registry.root) not in warning
    finally:
        await engine.drain_and_stop(5)


async def test_a_broken_or_missing_recorded_version_falls_back_to_the_newest_that_loads(registry) -> None:
    registry.record_active("tiny", 1, action="activate")
    (registry.root / "tiny" / "1" / "config.json").write_text("{}")
    engine = await _started(registry)
    try:
        assert engine.slot.active.key == ("tiny", 3)
        assert [w.split(":")[0] for w in engine.startup_warnings] == ["tiny@1 was not served"]
    finally:
        await engine.drain_and_stop(5)
    shutil.rmtree(registry.root / "tiny" / "1")
    engine = await _started(registry)
    try:
        assert engine.slot.active.key == ("tiny", 3)
        assert engine.startup_warnings == ["the recorded active version tiny@1 is not in the registry; serving "
                                           "the newest version of 'tiny' that loads"]
    finally:
        await engine.drain_and_stop(5)


async def test_a_server_with_no_loadable_version_says_why(registry) -> None:
    for version in (1, 2, 3):
        (registry.root / "tiny" / str(version) / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no version of 'tiny' could be loaded"):
        await _started(registry)


async def test_an_explicit_version_is_served_as_asked(registry) -> None:
    registry.record_active("tiny", 1, action="activate")
    engine = await _started(registry, "tiny@2")
    try:
        assert engine.slot.active.key == ("tiny", 2)
    finally:
        await engine.drain_and_stop(5)


async def test_an_ensemble_with_a_garbage_member_is_refused_at_activation(registry) -> None:
    good = tiny_model(0)
    publish_model(registry, "duo", EnsembleRecognizer.of([good, agreeing_copy(good, 1)]), source="ensemble")
    publish_model(registry, "duo", EnsembleRecognizer.of([good, tiny_model(7)]), source="ensemble")  # valid checksum
    engine = await _started(registry, "duo@1")
    try:
        with pytest.raises(ModelLoadError, match=r"members disagree on the calibration speech \(member \d 0\.\d\d"):
            await engine.activate("duo", 2)
        assert engine.slot.active.key == ("duo", 1)
        assert registry.serving_state("duo")["active"] is None  # a refused activation is not recorded
    finally:
        await engine.drain_and_stop(5)


def test_the_state_file_is_replaced_whole_and_lists_its_history(registry) -> None:
    for version in (2, 3, 1):
        registry.record_active("tiny", version, action="activate", by="ops", reason="canary passed")
    path = registry.root / "tiny" / "serving.json"
    state = json.loads(path.read_text())
    assert state["active"] == 1 and [e["previous"] for e in state["history"]] == [None, 2, 3]
    assert state["history"][-1]["reason"] == "canary passed"
    assert sorted(p.name for p in path.parent.iterdir()) == [".serving.lock", "1", "2", "3", "serving.json"]
    assert registry.versions("tiny") == [1, 2, 3] and registry.names() == ["tiny"]
