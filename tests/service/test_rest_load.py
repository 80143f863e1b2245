"""Under concurrency batches form; a full queue answers 429 and an expired deadline 504."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import make_config, running_app, slow_worker

pytestmark = pytest.mark.anyio


def histogram_buckets(metrics_text: str, name: str) -> dict[float, float]:
    for family in text_string_to_metric_families(metrics_text):
        if family.name == name:
            return {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
    raise AssertionError(f"{name} not in /metrics")


async def test_concurrent_requests_are_batched(registry_root, an4_paths) -> None:
    data = an4_paths[0].read_bytes()
    async with running_app(make_config(registry_root, max_queue_delay_ms=50)) as (client, _):
        responses = await asyncio.gather(*(client.post("/transcribe", files={"file": ("a.flac", data)})
                                           for _ in range(24)))
        assert all(r.status_code == 200 for r in responses)
        assert len({r.json()["text"] for r in responses}) == 1
        buckets = histogram_buckets((await client.get("/metrics")).text, "asr_batch_size")
        assert buckets[1.0] < buckets[float("inf")], f"every batch had size 1: {buckets}"


async def test_full_queue_gets_429_and_expired_deadline_504(registry_root, an4_paths, monkeypatch) -> None:
    data = an4_paths[0].read_bytes()
    config = make_config(registry_root, max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0,
                         request_timeout_s=30)
    async with running_app(config) as (client, engine):
        slow_worker(monkeypatch, 0.4)
        responses = await asyncio.gather(*(client.post("/transcribe", files={"file": ("a.flac", data)})
                                           for _ in range(8)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 429 in codes, codes
        busy = next(r for r in responses if r.status_code == 429)
        assert busy.json()["error"]["code"] == "queue_full" and busy.headers["retry-after"] == "1"

    async with running_app(make_config(registry_root, request_timeout_s=0.3, max_batch_size=1)) as (client, engine):
        slow_worker(monkeypatch, 0.6)
        responses = await asyncio.gather(*(client.post("/transcribe", files={"file": ("a.flac", data)})
                                           for _ in range(3)))
        assert 504 in [r.status_code for r in responses]
        late = next(r for r in responses if r.status_code == 504)
        assert "deadline" in late.json()["error"]["message"]
        metrics = (await client.get("/metrics")).text
        assert 'asr_requests_total{api="rest",status="504"}' in metrics
        assert 'asr_errors_total{reason="deadline_exceeded"}' in metrics
