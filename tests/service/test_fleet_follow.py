"""Servers that share a registry follow its desired state: `asr models activate` on the registry, any replica's admin
activation, a corrupt version refused everywhere without retry storms, and heartbeats for fleet status."""

from __future__ import annotations

import asyncio
import json

import pytest

from model import publish_model
from service.engine import Engine
from tests.cli.helpers import asr_in_process
from tests.service.conftest import make_config, tiny_model

pytestmark = pytest.mark.anyio
POLL_S = 0.05


@pytest.fixture()
def registry(three_versions):
    return three_versions


async def _replicas(registry, count: int = 2) -> list[Engine]:
    return [await Engine.start(make_config(registry.root, default_model="tiny", registry_poll_s=POLL_S,
                                           replica_id=f"replica-{i}")) for i in range(count)]


async def _until(condition, what: str, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(POLL_S / 2)


async def _polls(engine: Engine, count: int) -> None:
    """Waits until ``engine`` has written ``count`` more heartbeats (each one ends a poll)."""
    seen = []
    original = engine.replica.heartbeat

    def counting():
        seen.append(1)
        return original()

    engine.replica.heartbeat = counting
    try:
        await _until(lambda: len(seen) >= count, f"{count} polls")
    finally:
        engine.replica.heartbeat = original


async def test_every_replica_converges_to_what_the_registry_names(registry) -> None:
    replicas = await _replicas(registry)
    try:
        assert [r.slot.active.version for r in replicas] == [3, 3]
        activated = asr_in_process("--registry", registry.root, "models", "activate", "tiny@1", "--reason", "test")
        assert activated.returncode == 0 and json.loads(activated.stdout) == {"active": "tiny@1", "previous": None}
        await _until(lambda: all(r.slot.active.version == 1 for r in replicas), "both replicas on tiny@1")
        await replicas[0].activate("tiny", 2)  # one replica's admin API: the others follow
        await _until(lambda: replicas[1].slot.active.version == 2, "replica-1 on tiny@2")
        rolled = asr_in_process("--registry", registry.root, "models", "rollback", "tiny")
        assert json.loads(rolled.stdout) == {"active": "tiny@1", "previous": 2}
        await _until(lambda: all(r.slot.active.version == 1 for r in replicas), "both back on tiny@1")
        history = registry.serving_state("tiny")["history"]
        assert [(e["action"], e["version"]) for e in history] == [("activate", 1), ("activate", 2), ("rollback", 1)]
        assert history[0]["reason"] == "test" and history[0]["by"].startswith("asr models activate")
    finally:
        for replica in replicas:
            await replica.drain_and_stop(5)


async def test_a_corrupt_version_is_refused_on_every_replica_once_and_reported(registry) -> None:
    replicas = await _replicas(registry)
    loads = {r.replica.replica_id: [] for r in replicas}
    for replica in replicas:
        loader = replica.slot._loader

        async def counting(name, version, replica=replica, loader=loader):
            loads[replica.replica.replica_id].append(version)
            return await loader(name, version)

        replica.slot._loader = counting
    try:
        publish_model(registry, "tiny", tiny_model(3), source="trained")
        weights = registry.root / "tiny" / "4" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])
        registry.record_active("tiny", 4, action="activate")
        await _until(lambda: all(("tiny", 4) in r.replica.refused for r in replicas), "both replicas to refuse tiny@4")
        await _polls(replicas[0], 5)
        assert loads == {"replica-0": [4], "replica-1": [4]}  # tried once each, not once per poll
        assert [r.slot.active.version for r in replicas] == [3, 3]  # the old version kept serving
        await _polls(replicas[1], 1)
        status = {r["replica"]: r for r in replicas[0].replica.fleet()}
        assert sorted(status) == ["replica-0", "replica-1"] and all(r["alive"] for r in status.values())
        for beat in status.values():
            assert beat["serving"] == [{"name": "tiny", "version": 3, "state": "active"}]
            [refused] = beat["refused"]
            assert refused["model"] == "tiny@4" and "checksum mismatch" in refused["error"]
        assert 'asr_model_refused{name="tiny",version="4"} 1.0' in replicas[0].metrics.render().decode()
        printed = asr_in_process("--registry", registry.root, "fleet", "status")
        assert printed.returncode == 0 and printed.stdout.count("refused tiny@4") == 2
        registry.record_active("tiny", 2, action="activate")  # a new desired version is tried again
        await _until(lambda: all(r.slot.active.version == 2 for r in replicas), "both replicas on tiny@2")
    finally:
        for replica in replicas:
            await replica.drain_and_stop(5)


async def test_a_replica_that_stops_reporting_is_shown_as_lost(registry) -> None:
    first, second = await _replicas(registry)
    try:
        await _polls(second, 1)
        await second.drain_and_stop(5)
        await _until(lambda: {r["replica"]: r["alive"] for r in first.replica.fleet()} == {"replica-0": True,
                                                                                  "replica-1": False},
                     "replica-1 to be reported lost")
    finally:
        await first.drain_and_stop(5)


async def test_a_pinned_version_is_served_whatever_the_registry_names(registry) -> None:
    pinned = await Engine.start(make_config(registry.root, default_model="tiny@2", registry_poll_s=POLL_S))
    try:
        registry.record_active("tiny", 1, action="activate")
        await _polls(pinned, 3)
        assert pinned.slot.active.version == 2
    finally:
        await pinned.drain_and_stop(5)


def test_rollback_with_no_earlier_version_is_a_one_line_error(registry) -> None:
    asr_in_process("--registry", registry.root, "models", "rollback", "tiny").assert_one_line_error(
        "nothing to roll back to")
    asr_in_process("--registry", registry.root, "models", "activate", "tiny@9").assert_one_line_error(
        "'tiny@9' not found")
