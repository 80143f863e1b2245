"""A server's part in the fleet: it follows the registry's desired state, reports its heartbeat, and runs canaries.

Every ``registry_poll_s`` the replica reads the serving state of the model it serves
(``Registry.serving_state``), switches to the recorded active version through the engine's hot
swap (load, warm, switch, drain), loads a canary beside it and judges it with the other replicas'
counts (service.canary), then writes its heartbeat beside the registry (model.fleet). A version
that fails to load here is refused once, not retried every poll.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

from model.fleet import fleet_status, write_heartbeat
from service.canary import CanaryGate, VersionStats, goes_to_canary, verdict
from service.errors import RequestError, public_message
from service.model_slot import LoadedModel, ModelLoadError

if TYPE_CHECKING:
    from service.engine import Engine

log = logging.getLogger(__name__)


class Replica:
    """The engine's fleet membership (one per engine; a single server is a fleet of one).

    Attributes:
        replica_id: its name in fleet status (``replica_id`` setting, else HOSTNAME:HTTP_PORT).
        refused: desired versions that failed to load here, and why.
        canary: the registry's canary this replica routes to, or None.
    """

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.replica_id = engine.config.replica_id or f"{socket.gethostname()}:{engine.config.http_port}"
        self.refused: dict[tuple[str, int], str] = {}
        self.canary: dict | None = None
        self._canary_stats: dict[int, VersionStats] = {}
        self._started_at = time.time()

    async def follow_registry(self, pinned: bool) -> None:
        """Every ``registry_poll_s``: converge to the registry's desired version (unless the version is pinned
        by configuration), then report this replica's heartbeat (model.fleet)."""
        while not self.engine.draining:
            if not pinned:
                try:
                    await self.converge()
                except Exception:  # noqa: BLE001 - a bad poll must not end the loop; the next one tries again
                    log.exception("following the registry failed")
            try:
                await asyncio.to_thread(write_heartbeat, self.engine.registry.root, self.heartbeat())
            except OSError as e:  # a read-only registry: no fleet status, but serving goes on
                log.debug("cannot write the heartbeat: %s", e)
            await asyncio.sleep(self.engine.config.registry_poll_s)

    async def converge(self) -> None:
        """Serves the version the registry records as active for the active model's name, if it is another.

        Load, warm, switch and drain as ``activate`` does. A version that fails to load here is not
        tried again (no retry storm) until the registry names another: the old one keeps serving, and
        why is in ``refused``, the heartbeat and ``asr_model_refused``.
        """
        active = self.engine.slot.active
        if active is None:
            return
        state = await asyncio.to_thread(self.engine.registry.serving_state, active.name)
        desired = state["active"]
        if desired is not None and desired != active.version and (active.name, desired) not in self.refused:
            try:
                await self.engine.slot.activate(active.name, desired)
            except (ModelLoadError, RequestError) as e:
                self._refuse(active.name, desired, e)
                log.warning("not serving %s@%s, which the registry names: %s; still serving %s", active.name,
                            desired, self.refused[(active.name, desired)], active)
        await self._follow_canary(self.engine.slot.active.name, state["canary"])

    def _refuse(self, name: str, version: int, error: BaseException) -> None:
        self.refused[(name, version)] = public_message(error)
        self.engine.metrics.model_refused.labels(name=name, version=str(version)).set(1)

    async def _follow_canary(self, name: str, canary: dict | None) -> None:
        """Loads the registry's canary beside the active version, routes its share to it, and judges it.

        service.canary has the rules. A candidate this replica cannot load ends the canary for the
        whole fleet (rolled back, with why); a verdict is written by whichever replica reaches it first.
        """
        if canary is None or canary["version"] == self.engine.slot.active.version:
            self.canary, self._canary_stats = None, {}
            return
        if self.canary is None or self.canary["started_at"] != canary["started_at"]:
            try:
                await self.engine.slot.get((name, canary["version"]))
            except (ModelLoadError, RequestError) as e:
                self._refuse(name, canary["version"], e)
                await self._end_canary(name, canary, promote=False, why=f"it cannot be loaded: {public_message(e)}")
                return
            self.canary = {**canary, "name": name}
            self._canary_stats = {self.engine.slot.active.version: VersionStats(), canary["version"]: VersionStats()}
            log.info("canary %s@%s takes %s %% of the requests", name, canary["version"], canary["traffic_percent"])
        decision, why = verdict(CanaryGate(**canary["gate"]), *self._canary_summaries(canary),
                                elapsed_s=time.time() - canary["started_at"])  # started_at: the registry's wall clock
        if decision is not None:
            await self._end_canary(name, canary, promote=decision == "promote", why=why)

    def _canary_summaries(self, canary: dict) -> tuple[list[dict], list[dict]]:
        """The candidate's and the active version's counts on every live replica (this one's as of now)."""
        candidate, active = [], []
        beats = [b for b in self.fleet() if b.get("alive") and b.get("replica") != self.replica_id]
        for beat in [self.heartbeat()] + beats:
            reported = beat.get("canary") or {}
            if reported.get("started_at") != canary["started_at"]:
                continue
            stats = reported["stats"]
            candidate.append(stats[str(canary["version"])])
            active += [summary for version, summary in stats.items() if version != str(canary["version"])]
        return candidate, active

    async def _end_canary(self, name: str, canary: dict, *, promote: bool, why: str) -> None:
        ended = await asyncio.to_thread(self.engine.registry.end_canary, name, canary["started_at"], promote=promote,
                                        by=f"canary gate on {self.replica_id}", reason=why)
        result = "promoted" if promote else "rolled_back"
        if ended is not None:  # this replica wrote the verdict; the others will find the canary ended
            self.engine.metrics.rollouts.labels(result=result).inc()
            log.warning("canary %s@%s %s: %s", name, canary["version"], result.replace("_", " "), why)
        self.canary, self._canary_stats = None, {}

    def route(self, name: str, version: int, request_id: str | None) -> int:
        """The version a request for ``name`` (resolved to ``version``) goes to: the canary's, for its share."""
        canary = self.canary
        if canary is not None and name == canary["name"] and goes_to_canary(request_id or uuid.uuid4().hex,
                                                                            canary["traffic_percent"]):
            return canary["version"]
        return version

    def observe(self, model: LoadedModel, seconds: float, failed: bool) -> None:
        """Counts a finished request for the canary gate, while a canary of its model runs."""
        stats = self._canary_stats.get(model.version) if self.canary and self.canary["name"] == model.name else None
        if stats is not None:
            stats.observe(seconds, failed)

    def heartbeat(self) -> dict:
        """What this replica reports to the fleet (model.fleet): identity, what it serves, why not, its load."""
        active = self.engine.slot.active
        return {"replica": self.replica_id, "host": socket.gethostname(), "pid": os.getpid(),
                "started_at": self._started_at, "draining": self.engine.draining,
                "serving": [{"name": m["name"], "version": m["version"], "state": m["state"]}
                            for m in self.engine.list_models()],
                "refused": [{"model": f"{name}@{version}", "error": error}
                            for (name, version), error in self.refused.items()
                            if active is not None and name == active.name],
                "warnings": self.engine.startup_warnings,
                "canary": None if self.canary is None else {
                    "started_at": self.canary["started_at"], "version": self.canary["version"],
                    "stats": {str(version): stats.summary() for version, stats in self._canary_stats.items()}},
                "load": {"in_flight": self.engine.in_flight, "buffered_audio_s": round(self.engine.budget.held_s, 1),
                         "queue_depth": sum(m.batcher.queue_depth + (m.interim_batcher.queue_depth if m.interim_batcher else 0)
                                             for m in self.engine.slot.loaded())}}

    def fleet(self) -> list[dict]:
        """Every replica that reports into this registry (model.fleet.fleet_status)."""
        return fleet_status(self.engine.registry.root, stale_after_s=3 * self.engine.config.registry_poll_s)
