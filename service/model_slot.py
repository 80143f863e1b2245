"""ModelSlot: the loaded model versions, ref-counted leases on them, and the active-version pointer.

Hot swap (``activate``) loads and warms the new version beside the old one, flips the
pointer in one event-loop step (no await between lookup and lease, so no request ever
sees a half-swapped state), lets requests already holding a lease on the old version
finish, and unloads it once its last lease is released (Triton server#2076/PR #2117).
A load or warm-up failure leaves the old pointer untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from lm.model_lm import DEFAULT_LM_KEY
from model.errors import ASRError, Kind
from model.registry import InvalidNameError, NotFoundError, Registry, RegistryError, parse_spec
from service.domain import RequestError, ServiceUnavailableError, UnknownModelError

log = logging.getLogger(__name__)
DEFAULT_ALIASES = (None, "", "default")


class ModelLoadError(ASRError, RuntimeError):
    """A version that could not be loaded or warmed up; the old active version keeps serving."""

    kind, code = Kind.UNAVAILABLE, "model_load_failed"


@dataclass(eq=False)
class LoadedModel:
    """One loaded, warmed model version with its batcher.

    Attributes:
        name, version: registry identity.
        sample_rate: input rate in Hz.
        frame_duration_s: seconds per output frame.
        labels: output labels (blank is the extra last column).
        recorded_lm: the LM its config.json names and the weights tuned for it (lm.model_lm.recorded_lm).
        batcher: the DynamicBatcher feeding this version's worker.
        worker: the InferenceWorker (closed on unload).
        precision: the precision its inference form runs at (model.precision), reported in timings.
        card: its model card (model.card): training data, vocabulary, measured WERs.
        views: log-prob slices per frame: 1 for one network, an ensemble's member x speed count.
        interim_batcher, interim_worker: an ensemble's first member alone, with its own batcher: the cheap
            path streams run their windows through for interim results and endpointing (service.streaming);
            None for one network, whose windows are already one view.
        leases: requests currently using this version.
        retired: unload as soon as ``leases`` reaches 0 (unless it is active again).
    """

    name: str
    version: int
    sample_rate: int
    frame_duration_s: float
    labels: tuple[str, ...]
    recorded_lm: dict
    batcher: Any
    worker: Any
    precision: str = "fp32"
    card: dict | None = None
    views: int = 1
    interim_batcher: Any = None
    interim_worker: Any = None
    leases: int = 0
    retired: bool = False
    last_used: float = field(default_factory=time.monotonic)

    @property
    def default_lm(self) -> str | None:
        """The LM registry spec its config.json names, or None."""
        return self.recorded_lm.get(DEFAULT_LM_KEY)

    @property
    def key(self) -> tuple[str, int]:
        return self.name, self.version

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """One frame of its log-probs: (V+1,), or an ensemble's (views, V+1)."""
        return (len(self.labels) + 1,) if self.views == 1 else (self.views, len(self.labels) + 1)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


Loader = Callable[[str, int], Awaitable[LoadedModel]]
Unloader = Callable[[LoadedModel], Awaitable[None]]


class ModelSlot:
    """Owns every loaded version and which one is active (the default for unnamed requests).

    Args:
        registry: where versions are resolved.
        loader: ``await loader(name, version)`` loads and warms one version (raising ModelLoadError).
        unloader: ``await unloader(model)`` stops its batcher and frees memory.
        max_loaded: soft bound of the cache; beyond it idle non-active versions are retired.
        on_change: called after any load, unload or swap (metrics).
    """

    def __init__(self, registry: Registry, loader: Loader, unloader: Unloader, *, max_loaded: int = 4,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.registry = registry
        self._loader = loader
        self._unloader = unloader
        self.max_loaded = max_loaded
        self._on_change = on_change
        self._models: dict[tuple[str, int], LoadedModel] = {}
        self._loading: dict[tuple[str, int], asyncio.Task] = {}
        self._active: LoadedModel | None = None
        self._history: list[tuple[str, int]] = []
        self._swap_lock = asyncio.Lock()
        self._unload_tasks: set[asyncio.Task] = set()

    @property
    def active(self) -> LoadedModel | None:
        return self._active

    def loaded(self) -> list[LoadedModel]:
        return sorted(self._models.values(), key=lambda m: m.key)

    # --- lookup -------------------------------------------------------------------------

    def resolve_key(self, spec: str | None) -> tuple[str, int]:
        """Maps a request's model spec to (name, version) without loading anything.

        Raises:
            ServiceUnavailableError: no active model yet.
            UnknownModelError: no such name or version in the registry.
            RequestError: a malformed spec.
        """
        if spec in DEFAULT_ALIASES:
            if self._active is None:
                raise ServiceUnavailableError("no model is loaded yet; retry shortly")
            return self._active.key
        try:
            name, version = parse_spec(spec)
        except InvalidNameError as e:
            raise RequestError(f"invalid model {spec!r}: {e}") from None
        if version is None:
            if self._active is not None and self._active.name == name:
                return self._active.key
            loaded = [m.version for m in self._models.values() if m.name == name and not m.retired]
            if loaded:
                return name, max(loaded)
        try:
            ref = self.registry.resolve(f"{name}@{version}" if version else name)
        except NotFoundError as e:
            raise UnknownModelError(str(e)) from None
        except RegistryError as e:
            raise UnknownModelError(f"model {spec!r}: {e}") from None
        return ref.name, ref.version

    async def get(self, key: tuple[str, int]) -> LoadedModel:
        """The loaded version ``key``, loading it on demand (concurrent callers share one load)."""
        model = self._models.get(key)
        if model is not None:
            return model
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key))
            self._loading[key] = task
            task.add_done_callback(lambda _t: self._loading.pop(key, None))
        return await asyncio.shield(task)

    async def _load(self, key: tuple[str, int]) -> LoadedModel:
        model = await self._loader(*key)
        self._models[key] = model
        self._evict_beyond_bound(keep=model)
        self._on_change()
        return model

    def _evict_beyond_bound(self, keep: LoadedModel) -> None:
        idle = sorted((m for m in self._models.values() if m is not keep and m is not self._active and not m.retired),
                      key=lambda m: m.last_used)
        live = sum(1 for m in self._models.values() if not m.retired)
        for m in idle[: max(0, live - self.max_loaded)]:
            self._retire(m)

    @asynccontextmanager
    async def lease(self, spec: str | None) -> AsyncIterator[LoadedModel]:
        """Holds a version for the duration of one request, so a swap cannot unload it mid-way."""
        key = self.resolve_key(spec)
        model = self._models.get(key) or await self.get(key)
        # No await between here and the increment: a swap cannot slip in and unload it.
        model.leases += 1
        model.last_used = time.monotonic()
        try:
            yield model
        finally:
            model.leases -= 1
            if model.retired and model.leases == 0 and model is not self._active:
                self._schedule_unload(model)

    # --- lifecycle ----------------------------------------------------------------------

    async def activate(self, name: str, version: int | None = None, *, _record: bool = True) -> LoadedModel:
        """Makes NAME@VERSION (default: latest) the active version; returns it once it serves.

        Raises:
            UnknownModelError: not in the registry.
            ModelLoadError: it failed to load or warm up; the previous version stays active.
        """
        async with self._swap_lock:
            # "name" alone means the registry's newest version, not whichever one is active.
            spec = f"{name}@{version}" if version is not None else name
            try:
                ref = self.registry.resolve(spec)
            except InvalidNameError as e:
                raise RequestError(f"invalid model {spec!r}: {e}") from None
            except RegistryError as e:
                raise UnknownModelError(str(e)) from None
            key = (ref.name, ref.version)
            target = await self.get(key)
            previous = self._active
            target.retired = False
            self._active = target
            if previous is not None and previous is not target:
                if _record:
                    self._history.append(previous.key)
                self._retire(previous)
            log.info("active model is now %s (was %s)", target, previous)
            self._on_change()
            return target

    def remember_previous(self, name: str, version: int) -> None:
        """Seeds the rollback history (after a restart, from the registry's record)."""
        self._history.append((name, version))

    async def rollback(self) -> LoadedModel:
        """Re-activates the version that was active before the last ``activate``."""
        if not self._history:
            raise RequestError("nothing to roll back to: no earlier active version")
        name, version = self._history.pop()
        try:
            return await self.activate(name, version, _record=False)
        except Exception:
            self._history.append((name, version))
            raise

    def _retire(self, model: LoadedModel) -> None:
        model.retired = True
        if model.leases == 0:
            self._schedule_unload(model)

    def _schedule_unload(self, model: LoadedModel) -> None:
        if self._models.get(model.key) is not model:
            return
        del self._models[model.key]
        task = asyncio.get_running_loop().create_task(self._unload(model))
        self._unload_tasks.add(task)
        task.add_done_callback(self._unload_tasks.discard)

    async def _unload(self, model: LoadedModel) -> None:
        try:
            await self._unloader(model)
            log.info("unloaded %s", model)
        except Exception:  # noqa: BLE001 - an unload failure must not take the server down
            log.exception("unloading %s failed", model)
        self._on_change()

    async def close(self) -> None:
        """Unloads everything (after in-flight work on each version finished)."""
        for model in list(self._models.values()):
            self._active = None if model is self._active else self._active
            model.retired = True
            del self._models[model.key]
            await self._unload(model)
        self._active = None
        if self._unload_tasks:
            await asyncio.gather(*list(self._unload_tasks), return_exceptions=True)
