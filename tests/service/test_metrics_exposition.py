"""/metrics parses and carries the dashboard's metric names."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import make_config, running_app

pytestmark = pytest.mark.anyio

EXPECTED = {"asr_requests", "asr_request_duration_seconds", "asr_queue_wait_seconds", "asr_batch_size",
            "asr_inference_duration_seconds", "asr_audio_seconds", "asr_real_time_factor", "asr_queue_depth",
            "asr_active_streams", "asr_model_info", "asr_errors"}


async def test_metrics_parse_and_names(registry_root, an4_paths) -> None:
    async with running_app(make_config(registry_root)) as (client, _):
        await client.post("/transcribe", files={"file": ("a.flac", an4_paths[0].read_bytes())})
        await client.post("/v1/audio/transcriptions", files={"file": ("a.flac", an4_paths[0].read_bytes())})
        text = (await client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert EXPECTED <= set(families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("asr_requests_total", (("api", "rest"), ("status", "200")))] == 1
    assert samples[("asr_requests_total", (("api", "openai"), ("status", "200")))] == 1
    assert samples[("asr_model_info", (("name", "tiny"), ("state", "active"), ("version", "1")))] == 1
    assert samples[("asr_audio_seconds_total", ())] > 0
    assert samples[("asr_queue_depth", ())] == 0
    assert samples[("asr_errors_total", (("reason", "queue_full"),))] == 0
