"""service.model_slot: resolve_key, loading, activation, leases and retirement, with a fake loader."""

from __future__ import annotations

import asyncio

import pytest

from model.registry import Registry
from service.domain import RequestError, ServiceUnavailableError, UnknownModelError
from service.model_slot import LoadedModel, ModelLoadError, ModelSlot

pytestmark = pytest.mark.anyio

WAIT_S = 5.0  # deadline for events that should arrive within a few event-loop steps


class FakeVersions:
    """The loader and unloader an Engine passes to ModelSlot, recording calls and signalling unloads.

    ``gates[key]`` (when set) makes the load of ``key`` wait for that event; ``fail`` holds keys whose
    load raises ModelLoadError, as Engine._load_version does for a broken artifact.
    """

    def __init__(self) -> None:
        self.loads: list[tuple[str, int]] = []
        self.unloads: list[tuple[str, int]] = []
        self.gates: dict[tuple[str, int], asyncio.Event] = {}
        self.fail: set[tuple[str, int]] = set()
        self._unloaded: dict[tuple[str, int], asyncio.Event] = {}

    async def load(self, name: str, version: int) -> LoadedModel:
        key = (name, version)
        self.loads.append(key)
        if key in self.gates:
            await self.gates[key].wait()
        if key in self.fail:
            raise ModelLoadError(f"cannot load model {name}@{version}: broken artifact")
        return LoadedModel(name, version, 16_000, 0.02, ("a", "b"), {}, batcher=object(), worker=object())

    async def unload(self, model: LoadedModel) -> None:
        self.unloads.append(model.key)
        self.unloaded(model.key).set()

    def unloaded(self, key: tuple[str, int]) -> asyncio.Event:
        return self._unloaded.setdefault(key, asyncio.Event())

    async def wait_unloaded(self, key: tuple[str, int]) -> None:
        await asyncio.wait_for(self.unloaded(key).wait(), WAIT_S)


async def settle() -> None:
    """Lets tasks the slot scheduled (unloads) run: a few event-loop steps, no wall-clock wait."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def registry(tmp_path) -> Registry:
    """tiny@1, tiny@2 and other@1: ModelSlot resolves names from the version folders alone."""
    for name, version in (("tiny", 1), ("tiny", 2), ("other", 1)):
        (tmp_path / name / str(version)).mkdir(parents=True)
    return Registry(tmp_path)


@pytest.fixture
def versions() -> FakeVersions:
    return FakeVersions()


@pytest.fixture
def changes() -> list[int]:
    return []


@pytest.fixture
def slot(registry, versions, changes) -> ModelSlot:
    return ModelSlot(registry, versions.load, versions.unload, max_loaded=4, on_change=lambda: changes.append(1))


# --- resolve_key --------------------------------------------------------------------------------------


async def test_default_spec_needs_an_active_model(slot) -> None:
    for spec in (None, "", "default"):
        with pytest.raises(ServiceUnavailableError):
            slot.resolve_key(spec)
    with pytest.raises(ServiceUnavailableError):
        async with slot.lease(None):
            pass


async def test_resolve_key_maps_specs_without_loading_anything(slot, versions) -> None:
    await slot.activate("tiny", 1)
    assert versions.loads == [("tiny", 1)]
    for spec in (None, "", "default"):
        assert slot.resolve_key(spec) == ("tiny", 1)
    assert slot.resolve_key("tiny") == ("tiny", 1)  # the active version of that name, not the newest
    assert slot.resolve_key("tiny@2") == ("tiny", 2)
    assert slot.resolve_key("tiny@latest") == ("tiny", 1)
    assert slot.resolve_key("other") == ("other", 1)  # not loaded: the registry's newest
    assert versions.loads == [("tiny", 1)]


async def test_resolve_key_of_a_name_prefers_its_newest_loaded_version(slot) -> None:
    await slot.activate("other")
    await slot.get(("tiny", 1))
    assert slot.resolve_key("tiny") == ("tiny", 1)  # loaded, so no load of tiny@2 for a bare name
    assert slot.resolve_key("tiny@2") == ("tiny", 2)


async def test_resolve_key_refuses_unknown_and_malformed_specs(slot) -> None:
    await slot.activate("tiny")
    for spec in ("nope", "nope@1", "tiny@9"):
        with pytest.raises(UnknownModelError):
            slot.resolve_key(spec)
    for spec in ("tiny@x", "../tiny", "tiny@0"):
        with pytest.raises(RequestError) as excinfo:
            slot.resolve_key(spec)
        assert not isinstance(excinfo.value, UnknownModelError)


# --- loading and activation --------------------------------------------------------------------------


async def test_activate_loads_the_newest_version_and_makes_it_active(slot, versions, changes) -> None:
    assert slot.active is None
    model = await slot.activate("tiny")
    assert model.key == ("tiny", 2) and slot.active is model
    assert versions.loads == [("tiny", 2)] and [m.key for m in slot.loaded()] == [("tiny", 2)]
    assert changes  # metrics were told
    assert await slot.activate("tiny", 2) is model
    assert versions.loads == [("tiny", 2)]  # already loaded: no second load


async def test_activating_an_unknown_model_keeps_the_active_one(slot) -> None:
    first = await slot.activate("tiny", 1)
    for name, version in (("nope", None), ("tiny", 7)):
        with pytest.raises(UnknownModelError):
            await slot.activate(name, version)
    assert slot.active is first


async def test_a_failed_load_leaves_the_old_version_active_and_is_not_cached(slot, versions) -> None:
    first = await slot.activate("tiny", 1)
    versions.fail.add(("tiny", 2))
    with pytest.raises(ModelLoadError, match="broken artifact"):
        await slot.activate("tiny", 2)
    assert slot.active is first and not first.retired
    assert [m.key for m in slot.loaded()] == [("tiny", 1)]
    async with slot.lease(None) as model:
        assert model is first
    await settle()
    assert versions.unloads == []
    versions.fail.clear()
    assert (await slot.activate("tiny", 2)).key == ("tiny", 2)  # a retry loads again
    assert versions.loads == [("tiny", 1), ("tiny", 2), ("tiny", 2)]


async def test_concurrent_requests_for_one_version_share_one_load(slot, versions) -> None:
    gate = versions.gates[("tiny", 2)] = asyncio.Event()
    first = asyncio.ensure_future(slot.get(("tiny", 2)))
    second = asyncio.ensure_future(slot.get(("tiny", 2)))
    await settle()
    assert not first.done() and not second.done()
    gate.set()
    a, b = await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
    assert a is b and versions.loads == [("tiny", 2)]


async def test_the_active_pointer_flips_only_once_the_new_version_has_loaded(slot, versions) -> None:
    first = await slot.activate("tiny", 1)
    gate = versions.gates[("tiny", 2)] = asyncio.Event()
    swap = asyncio.ensure_future(slot.activate("tiny", 2))
    await settle()
    assert not swap.done() and slot.active is first  # requests keep going to the old version meanwhile
    async with slot.lease(None) as model:
        assert model is first
    gate.set()
    assert (await asyncio.wait_for(swap, WAIT_S)).key == ("tiny", 2)
    assert slot.active.key == ("tiny", 2)


# --- leases and retirement ---------------------------------------------------------------------------


async def test_a_swapped_out_version_without_leases_is_unloaded(slot, versions) -> None:
    first = await slot.activate("tiny", 1)
    await slot.activate("tiny", 2)
    await versions.wait_unloaded(("tiny", 1))
    assert first.retired and versions.unloads == [("tiny", 1)]
    assert [m.key for m in slot.loaded()] == [("tiny", 2)]


async def test_a_leased_version_is_unloaded_only_after_its_lease_ends(slot, versions) -> None:
    await slot.activate("tiny", 1)
    async with slot.lease("tiny@1") as held:
        assert held.leases == 1
        await slot.activate("tiny", 2)
        await settle()
        assert held.retired and versions.unloads == []
        assert ("tiny", 1) in [m.key for m in slot.loaded()]
        async with slot.lease("tiny@1") as again:  # an explicit request for it still gets the same one
            assert again is held and held.leases == 2
        await settle()
        assert versions.unloads == []  # one lease is still held
    assert held.leases == 0
    await versions.wait_unloaded(("tiny", 1))
    assert versions.unloads == [("tiny", 1)]
    assert [m.key for m in slot.loaded()] == [("tiny", 2)]


async def test_a_lease_is_released_when_the_request_fails(slot, versions) -> None:
    await slot.activate("tiny", 1)
    with pytest.raises(KeyError):
        async with slot.lease(None) as held:
            await slot.activate("tiny", 2)
            raise KeyError("request failed mid-way")
    assert held.leases == 0
    await versions.wait_unloaded(("tiny", 1))


async def test_reactivating_a_retired_leased_version_keeps_it_loaded(slot, versions) -> None:
    first = await slot.activate("tiny", 1)
    async with slot.lease(None) as held:
        await slot.activate("tiny", 2)
        assert held.retired
        assert await slot.activate("tiny", 1) is first  # the same object: no reload
    assert not first.retired and slot.active is first
    await versions.wait_unloaded(("tiny", 2))
    await settle()
    assert versions.loads == [("tiny", 1), ("tiny", 2)] and versions.unloads == [("tiny", 2)]


async def test_rollback_reactivates_the_previous_version(slot, versions) -> None:
    with pytest.raises(RequestError, match="nothing to roll back"):
        await slot.rollback()
    await slot.activate("tiny", 1)
    await slot.activate("tiny", 2)
    await versions.wait_unloaded(("tiny", 1))
    assert (await slot.rollback()).key == ("tiny", 1)
    assert versions.loads == [("tiny", 1), ("tiny", 2), ("tiny", 1)]  # it had been unloaded, so it reloads
    with pytest.raises(RequestError, match="nothing to roll back"):
        await slot.rollback()  # rollback records no history of its own


async def test_a_failed_rollback_can_be_retried(slot, versions) -> None:
    await slot.activate("tiny", 1)
    await slot.activate("tiny", 2)
    await versions.wait_unloaded(("tiny", 1))
    versions.fail.add(("tiny", 1))
    with pytest.raises(ModelLoadError):
        await slot.rollback()
    assert slot.active.key == ("tiny", 2)
    versions.fail.clear()
    assert (await slot.rollback()).key == ("tiny", 1)


async def test_beyond_max_loaded_the_least_recently_used_idle_version_is_retired(registry, versions) -> None:
    slot = ModelSlot(registry, versions.load, versions.unload, max_loaded=2)
    await slot.activate("tiny", 2)
    async with slot.lease("tiny@1"):
        pass
    assert {m.key for m in slot.loaded()} == {("tiny", 1), ("tiny", 2)}
    await slot.get(("other", 1))  # a third: tiny@1 is the only idle one that is not active
    await versions.wait_unloaded(("tiny", 1))
    assert {m.key for m in slot.loaded()} == {("tiny", 2), ("other", 1)} and slot.active.key == ("tiny", 2)


async def test_an_unload_failure_is_logged_not_raised(registry, versions, caplog) -> None:
    failed = asyncio.Event()

    async def broken_unload(model: LoadedModel) -> None:
        failed.set()
        raise RuntimeError("driver error")

    slot = ModelSlot(registry, versions.load, broken_unload)
    await slot.activate("tiny", 1)
    await slot.activate("tiny", 2)
    await asyncio.wait_for(failed.wait(), WAIT_S)
    await settle()
    assert slot.active.key == ("tiny", 2)
    assert any("unloading tiny@1 failed" in r.getMessage() for r in caplog.records)


async def test_close_unloads_every_version(slot, versions) -> None:
    await slot.activate("tiny", 1)
    await slot.get(("other", 1))
    await slot.close()
    assert slot.active is None and slot.loaded() == []
    assert sorted(versions.unloads) == [("other", 1), ("tiny", 1)]
