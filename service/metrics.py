"""Every Prometheus metric of the service, defined once on a per-Engine CollectorRegistry.

The names are a contract with the Grafana dashboard; do not rename them. Each ``Metrics``
owns its own registry so several apps (tests) can live in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Whole-file ASR runs from tens of ms (short clips) to minutes (hour-long files); the
# client's default buckets stop at 10 s.
_LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_QUEUE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_RTF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
ERROR_REASONS = ("bad_audio", "unknown_model", "queue_full", "memory_budget", "deadline", "too_large", "bad_request",
                 "internal", "unavailable", "unauthenticated", "wrong_model_kind", "idle_timeout", "cancelled")

__all__ = ["Metrics", "CONTENT_TYPE_LATEST", "ERROR_REASONS"]

# The *_created series double the exposition size and no dashboard reads them.
disable_created_metrics()


class Metrics:
    """The service's metrics; transports count requests, the engine and batcher the rest."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("asr_requests", "Finished requests by transport and status (HTTP code or gRPC code name).",
                                ["api", "status"], registry=r)
        self.request_duration = Histogram("asr_request_duration_seconds", "End-to-end request latency.", ["api"],
                                          buckets=_LATENCY_BUCKETS_S, registry=r)
        self.queue_wait = Histogram("asr_queue_wait_seconds", "Time an audio window waited in the batch queue.",
                                    buckets=_QUEUE_BUCKETS_S, registry=r)
        self.batch_size = Histogram("asr_batch_size", "Audio windows per forward pass.", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.inference_duration = Histogram("asr_inference_duration_seconds", "Compute time of one batch.",
                                            buckets=_LATENCY_BUCKETS_S, registry=r)
        self.audio_seconds = Counter("asr_audio_seconds", "Seconds of audio transcribed.", registry=r)
        self.real_time_factor = Histogram("asr_real_time_factor",
                                          "Compute seconds (inference + decode) per audio second, per request.",
                                          buckets=_RTF_BUCKETS, registry=r)
        self.queue_depth = Gauge("asr_queue_depth", "Audio windows waiting in batch queues.", registry=r)
        self.active_streams = Gauge("asr_active_streams", "Open streaming sessions.", registry=r)
        self.buffered_audio = Gauge("asr_buffered_audio_seconds",
                                    "Audio held by requests and streams, in seconds of the memory budget.", registry=r)
        self.model_info = Gauge("asr_model_info", "1 per loaded model version; state is active or loaded.",
                                ["name", "version", "state"], registry=r)
        self.model_refused = Gauge("asr_model_refused",
                                   "1 per version the registry names active that this replica could not load.",
                                   ["name", "version"], registry=r)
        self.rollouts = Counter("asr_rollouts", "Canary verdicts this replica wrote: promoted or rolled_back.",
                                ["result"], registry=r)
        for result in ("promoted", "rolled_back"):
            self.rollouts.labels(result=result)
        self.errors = Counter("asr_errors", "Failed requests by reason.", ["reason"], registry=r)
        for reason in ERROR_REASONS:
            self.errors.labels(reason=reason)  # pre-initialise so rate() sees zeros, not gaps

    def observe_request(self, api: str, status: str | int, duration_s: float) -> None:
        """Counts one finished request (call once, when it ends)."""
        self.requests.labels(api=api, status=str(status)).inc()
        self.request_duration.labels(api=api).observe(duration_s)

    def count_error(self, reason: str) -> None:
        self.errors.labels(reason=reason).inc()

    def set_models(self, models: list[tuple[str, int, str]]) -> None:
        """Replaces the asr_model_info series with one per (name, version, state)."""
        self.model_info.clear()
        for name, version, state in models:
            self.model_info.labels(name=name, version=str(version), state=state).set(1)

    def render(self) -> bytes:
        """The text exposition format for GET /metrics."""
        return generate_latest(self.registry)
