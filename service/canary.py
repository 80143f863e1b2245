"""Canary releases: which requests a candidate version gets, what each replica measures of it, and the fleet's verdict.

A canary is recorded in the registry (``Registry.record_canary``) with its traffic share and its
gate. Every replica then sends that share of the requests that name no version to the candidate,
chosen from the request id (a retried request, same id, gets the same version; a stream chooses
once, for its whole life), and counts, per version, requests, failures that are the version's
fault (internal errors and deadlines, not a client's bad audio) and latency. Each replica's counts
go out in its heartbeat (model.fleet); on every poll each replica adds up the live replicas'
counts and judges: a breach rolls the canary back at once, enough good requests promote it.
Whichever replica writes first acts (``Registry.end_canary``); the others find it ended.

The live gate's error budget is ``max_error_rate x min_requests`` failures of the candidate: it
is rolled back once it fails more than that, so a broken candidate costs at most that many
failed requests plus those it answers while the verdict travels (within two polls).
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import asdict, dataclass

__all__ = ["CanaryGate", "VersionStats", "goes_to_canary", "verdict"]

# Latencies each replica keeps per version for its p99.
_LATENCY_SAMPLES = 2048


@dataclass(frozen=True)
class CanaryGate:
    """When a canary is promoted or rolled back (all over the whole fleet's counts since it started).

    Attributes:
        min_requests: requests the candidate must answer before it can be promoted.
        max_error_rate: the share of them it may fail; more failures than ``max_error_rate *
            min_requests`` roll it back at once.
        max_p99_increase: its p99 latency may exceed the active version's by this fraction (0.5: 50 %)...
        p99_slack_s: ...plus this many seconds, so that tens of ms of scheduling noise on a busy host
            do not fail a version whose requests take tens of ms.
        promote_after_minutes: where traffic is low, promote this long after the canary started even short of
            ``min_requests``, if the candidate has answered at least one request, failed at most
            ``max_error_rate`` of them and meets the latency rule; None waits for ``min_requests``.
    """

    min_requests: int = 200
    max_error_rate: float = 0.01
    max_p99_increase: float = 0.5
    p99_slack_s: float = 0.05
    promote_after_minutes: float | None = None

    def __post_init__(self) -> None:
        timed = self.promote_after_minutes
        if (self.min_requests < 1 or not 0 <= self.max_error_rate < 1 or self.max_p99_increase < 0
                or self.p99_slack_s < 0 or (timed is not None and timed <= 0)):
            raise ValueError(f"a canary gate needs min_requests >= 1, 0 <= max_error_rate < 1, "
                             f"max_p99_increase >= 0, p99_slack_s >= 0 and promote_after_minutes > 0, got {self}")

    @property
    def error_budget(self) -> int:
        """Failed requests of the candidate beyond which it is rolled back."""
        return math.floor(self.max_error_rate * self.min_requests)

    def to_dict(self) -> dict:
        return asdict(self)


def goes_to_canary(request_id: str, traffic_percent: float) -> bool:
    """Whether the request with this id goes to the candidate: the same id always gets the same answer."""
    bucket = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") % 10_000
    return bucket < traffic_percent * 100


class VersionStats:
    """One replica's requests, failures and latencies for one version (event loop only)."""

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)

    def observe(self, seconds: float, failed: bool) -> None:
        self.requests += 1
        self.failures += failed
        if not failed:
            self._latencies.append(seconds)

    def summary(self) -> dict:
        ordered = sorted(self._latencies)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None
        return {"requests": self.requests, "failures": self.failures, "p99_s": p99}


def verdict(gate: CanaryGate, candidate: list[dict], active: list[dict], elapsed_s: float = 0.0
            ) -> tuple[str | None, str]:
    """The fleet's decision from every live replica's summaries of the candidate and of the active version.

    Args:
        elapsed_s: how long the canary has run (for ``gate.promote_after_minutes``).

    Returns:
        ("promote" | "rollback" | None, why); None while the candidate has not yet answered enough.
    """
    requests = sum(s["requests"] for s in candidate)
    failures = sum(s["failures"] for s in candidate)
    if failures > gate.error_budget:
        return "rollback", (f"the candidate failed {failures} of {requests} requests; the gate allows "
                            f"{gate.error_budget} ({gate.max_error_rate:.1%} of {gate.min_requests})")
    timed_out = gate.promote_after_minutes is not None and elapsed_s >= gate.promote_after_minutes * 60
    if requests < gate.min_requests and not timed_out:
        return None, f"{requests} of {gate.min_requests} requests answered"
    if requests == 0:  # only when timed out: nothing to judge it by
        return "rollback", f"the candidate answered no request in {gate.promote_after_minutes:g} minutes"
    if requests < gate.min_requests and failures > gate.max_error_rate * requests:
        return "rollback", (f"after {gate.promote_after_minutes:g} minutes the candidate failed {failures} of "
                            f"{requests} requests; the gate allows {gate.max_error_rate:.1%} of them")
    p99 = max((s["p99_s"] for s in candidate if s["p99_s"] is not None), default=None)
    baseline = max((s["p99_s"] for s in active if s["p99_s"] is not None), default=None)
    if p99 is not None and baseline is not None and p99 > baseline * (1 + gate.max_p99_increase) + gate.p99_slack_s:
        return "rollback", (f"the candidate's p99 is {p99:.3f} s against the active version's {baseline:.3f} s; "
                            f"the gate allows +{gate.max_p99_increase:.0%} + {gate.p99_slack_s:g} s")
    early = f"after {gate.promote_after_minutes:g} minutes, " if requests < gate.min_requests else ""
    said = {key: "n/a" if value is None else f"{value:.3f} s" for key, value in (("p99", p99), ("base", baseline))}
    return "promote", (f"{early}{requests} requests, {failures} failed (budget {gate.error_budget}), p99 "
                       f"{said['p99']} against {said['base']}")
