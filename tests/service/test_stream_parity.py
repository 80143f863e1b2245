"""Streaming finals vs offline transcripts on the whole AN4 test set (130 utterances).

Each utterance is streamed through a StreamingSession in 100 ms messages with default options
(endpointing on), stepping whenever the session is ready, then its finals are joined and
compared with Engine.transcribe on the same audio. No batch wait: one stream at a time never
fills a batch, and the ~1,500 model calls would otherwise each wait max_queue_delay_ms.
"""

from __future__ import annotations

import jiwer
import pytest

from model.audio import decode_audio
from service.domain import TranscriptionRequest
from service.streaming import StreamingOptions
from tests.service.test_grpc_support import (AN4_MODEL, AN4_REGISTRY, AN4_TEST_MANIFEST, an4_test_set, run,
                                             service_config, serving, stream_simulated)
from tests.tiny_model import publish_tiny_model

pytestmark = pytest.mark.skipif(not AN4_TEST_MANIFEST.exists(), reason="shared AN4 data not found")


async def _compare(config) -> tuple[list[str], list[str], list[str]]:
    """(references, offline texts, streaming texts) over the AN4 test set."""
    refs, offline, streamed = [], [], []
    async with serving(config) as (engine, _target):
        name, version, rate = engine.resolve_model(None)
        for path, text in an4_test_set():
            audio = decode_audio(path, rate).samples
            refs.append(text)
            offline.append((await engine.transcribe(TranscriptionRequest(audio))).text)
            results = await stream_simulated(engine, f"{name}@{version}", rate, audio, StreamingOptions())
            streamed.append(" ".join(r.text for r in results if r.is_final and r.text))
    return refs, offline, streamed


def test_tiny_model_stream_finals_equal_offline_text(tmp_path):
    """Always-on weak check: a random model's (non-empty, noisy) output, utterance by utterance."""
    publish_tiny_model(tmp_path)
    _, offline, streamed = run(_compare(service_config(tmp_path, max_queue_delay_ms=0)))
    assert sum(bool(t) for t in offline) > 100  # the random model does emit characters
    mismatches = [(i, a, b) for i, (a, b) in enumerate(zip(offline, streamed)) if a != b]
    assert not mismatches, mismatches[:3]


@pytest.mark.skipif(not (AN4_REGISTRY / AN4_MODEL).is_dir(),
                    reason=f"trained model {AN4_MODEL} is not published in {AN4_REGISTRY} yet")
def test_an4_model_stream_wer_within_half_a_point_of_offline():
    refs, offline, streamed = run(_compare(service_config(AN4_REGISTRY, model=AN4_MODEL, max_queue_delay_ms=0)))
    offline_wer = jiwer.wer(refs, offline)
    stream_wer = jiwer.wer(refs, streamed)
    differing = sum(a != b for a, b in zip(offline, streamed))
    # How far streaming is from offline itself (word edits per offline word), not just from the refs.
    edits = sum(jiwer.process_words(a or "<empty>", b or "<empty>").wer * len((a or "<empty>").split())
                for a, b in zip(offline, streamed) if a != b)
    print(f"AN4 test: offline WER {offline_wer:.4f}, streaming WER {stream_wer:.4f}, "
          f"{differing} of {len(refs)} transcripts differ, "
          f"{edits / max(1, sum(len(a.split()) for a in offline)):.4f} word edits per offline word")
    assert abs(stream_wer - offline_wer) <= 0.005


def test_an_ensemble_streams_its_windows_through_one_member_and_its_finals_through_all(tmp_path):
    """The cheap path: a stream's windows run the ensemble's first member alone (its own batcher), each
    final one pass of every view, so finals still equal offline Recognize."""
    import numpy as np

    from model import publish_model
    from model.ensemble import EnsembleRecognizer
    from model.inference import for_inference
    from model.registry import Registry
    from tests.service.conftest import tiny_model
    from tests.tiny_model import agreeing_copy

    members = [tiny_model(0), agreeing_copy(tiny_model(0), 1)]
    publish_model(Registry(tmp_path), "duo", EnsembleRecognizer.of(members), source="ensemble")

    async def main():
        async with serving(service_config(tmp_path, model="duo", max_queue_delay_ms=0, precision="fp32")) as (engine,
                                                                                                                _):
            name, version, rate = engine.resolve_model(None)
            loaded = engine.slot.active
            assert loaded.views == 2 and loaded.interim_batcher is not None
            clips = [decode_audio(path, rate).samples for path, _ in an4_test_set(limit=12)]
            cheap = await engine.log_probs(clips[0], "duo@1", interim=True)
            whole = await engine.log_probs(clips[0], "duo@1")
            assert cheap.log_probs.shape == (whole.log_probs.shape[0], whole.log_probs.shape[2])
            # The cheap path is member 0 as it runs alone (and as view 0 of the ensemble's pass).
            alone = for_inference(members[0], "fp32").log_probs_batch([clips[0]])[0]
            assert float(np.abs(cheap.log_probs - alone).max()) <= 1e-4
            submitted = {"cheap": 0, "whole": 0}

            def counted(batcher, key):
                submit = batcher.submit

                async def counting(*args, **kwargs):
                    submitted[key] += 1
                    return await submit(*args, **kwargs)
                return counting

            loaded.interim_batcher.submit = counted(loaded.interim_batcher, "cheap")
            loaded.batcher.submit = counted(loaded.batcher, "whole")
            mismatches, finals = [], 0
            for audio in clips:
                offline = (await engine.transcribe(TranscriptionRequest(audio))).text
                results = await stream_simulated(engine, f"{name}@{version}", rate, audio, StreamingOptions())
                streamed = " ".join(r.text for r in results if r.is_final and r.text)
                finals += sum(r.is_final for r in results)
                if streamed != offline:
                    mismatches.append((offline, streamed))
            return mismatches, submitted, finals, len(clips)

    mismatches, submitted, finals, num_clips = run(main())
    assert not mismatches, mismatches[:3]
    # The whole ensemble ran each offline request, each final, and at most one unconfirmed endpoint candidate
    # per final; the many windows (one per 0.32 s of audio) all took the cheap path.
    assert submitted["whole"] <= num_clips + 2 * finals
    assert submitted["cheap"] > 3 * submitted["whole"]
