"""Long, cancelled and concurrent requests at the engine: windows in order and few at a time, work that stops
when its request ends, admission from the measured speed, the memory budget's arithmetic, and clips too short
for a frame."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.admission import LongJob, RateEstimate, admit_long, request_deadline
from service.budget import AudioBudget, bytes_per_audio_second
from service.config import ServiceConfig
from service.domain import (DeadlineExceededError, PayloadTooLargeError, QueueFullError, RequestError,
                            TranscriptionRequest)
from service.engine import Engine
from service.errors import MemoryBudgetError
from tests.service.conftest import make_config, slow_worker

pytestmark = pytest.mark.anyio
RATE = 16_000


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


class _Submissions:
    """Counts the windows a model's batcher is given, how many wait on it at once, and signals each one."""

    def __init__(self, engine: Engine, monkeypatch) -> None:
        self.count = self.waiting = self.most_waiting = 0
        self.changed = asyncio.Event()
        batcher = engine.slot.active.batcher
        submit = batcher.submit

        async def counting(item, **kwargs):
            self.count += 1
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
            self.changed.set()
            try:
                return await submit(item, **kwargs)
            finally:
                self.waiting -= 1

        monkeypatch.setattr(batcher, "submit", counting)

    async def until(self, count: int) -> None:
        async with asyncio.timeout(60):
            while self.count < count:
                self.changed.clear()
                await self.changed.wait()


async def _idle(engine: Engine) -> None:
    """Waits until the active model's batcher has nothing queued or running."""
    async with asyncio.timeout(60):
        while engine.slot.active.batcher.busy:
            await asyncio.sleep(0.01)


def _long_config(registry_root, **overrides) -> ServiceConfig:
    settings = dict(long_audio_window_s=2.0, long_audio_overlap_s=0.4, long_audio_windows_in_flight=2)
    return make_config(registry_root, **{**settings, **overrides})


async def test_a_long_clip_runs_a_few_windows_at_a_time_in_order(registry_root, monkeypatch) -> None:
    engine = await Engine.start(_long_config(registry_root))
    try:
        submissions = _Submissions(engine, monkeypatch)
        fed = []
        decoding_start = engine.decoding.start

        def recording_start(*args):
            decode = decoding_start(*args)
            feed = decode.feed
            decode.feed = lambda frames: (fed.append(len(frames)), feed(frames))
            return decode

        monkeypatch.setattr(engine.decoding, "start", recording_start)
        clip = _noise(20.0)
        result = await engine.transcribe(TranscriptionRequest(audio=clip))
        windows = engine._windows(engine.slot.active, clip)
        assert submissions.count == len(windows) == 13
        assert submissions.most_waiting <= 2  # long_audio_windows_in_flight
        # Each window's kept frames, once: the seams tile the 1,000 frames (test_engine_long_audio: in order).
        assert len(fed) == 13 and sum(fed) == 1000 and result.duration_s == 20.0
    finally:
        await engine.drain_and_stop(5)


async def test_a_cancelled_request_stops_at_its_next_window(registry_root, monkeypatch) -> None:
    slow_worker(monkeypatch, 0.05)
    engine = await Engine.start(_long_config(registry_root))
    try:
        submissions = _Submissions(engine, monkeypatch)
        task = asyncio.ensure_future(engine.transcribe(TranscriptionRequest(audio=_noise(60.0))))
        await submissions.until(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        submitted = submissions.count
        await _idle(engine)
        assert submissions.count == submitted < 10  # of 35 windows; none were queued after the cancel
        assert engine.budget.held_s == 0 and not engine._long_jobs
    finally:
        await engine.drain_and_stop(5)


async def test_no_window_is_run_after_the_deadline(registry_root, monkeypatch) -> None:
    slow_worker(monkeypatch, 0.05)
    engine = await Engine.start(_long_config(registry_root))
    try:
        submissions = _Submissions(engine, monkeypatch)
        with pytest.raises(DeadlineExceededError):
            await engine.transcribe(TranscriptionRequest(audio=_noise(60.0), deadline_s=time.monotonic() + 0.3))
        submitted = submissions.count
        await _idle(engine)
        assert submissions.count == submitted < 20
    finally:
        await engine.drain_and_stop(5)


async def test_a_deadline_too_short_for_the_audio_is_refused_before_any_work(registry_root, monkeypatch) -> None:
    engine = await Engine.start(_long_config(registry_root))
    try:
        submissions = _Submissions(engine, monkeypatch)
        engine.slot.active.worker.rate._rate = 100.0  # audio seconds per second, as if measured
        with pytest.raises(PayloadTooLargeError, match="needs about 1 s at this server's measured speed"):
            await engine.transcribe(TranscriptionRequest(audio=_noise(100.0), deadline_s=time.monotonic() + 0.5))
        assert submissions.count == 0
        result = await engine.transcribe(TranscriptionRequest(audio=_noise(30.0), deadline_s=time.monotonic() + 30))
        assert result.duration_s == 30.0
    finally:
        await engine.drain_and_stop(5)


# ---- the arithmetic of deadlines and admission ----


def test_a_request_gets_time_in_proportion_to_its_audio_or_its_clients_deadline_if_sooner() -> None:
    assert request_deadline(100.0, 3540.0, None, timeout_s=60.0, timeout_per_audio_s=0.1) == pytest.approx(514.0)
    assert request_deadline(100.0, 5.0, None, timeout_s=60.0, timeout_per_audio_s=0.1) == pytest.approx(160.5)
    assert request_deadline(100.0, 3540.0, 102.0, timeout_s=60.0, timeout_per_audio_s=0.1) == 102.0


def test_long_requests_are_admitted_by_their_measured_speed() -> None:
    rate = RateEstimate()
    assert admit_long(3540.0, rate, 1.0, []).remaining_audio_s == 3540.0  # not measured yet: admitted
    rate.observe(5.0, 1.0)  # a short batch says nothing about long work
    assert rate.audio_s_per_s is None
    rate.observe(30.0, 0.1)
    assert rate.audio_s_per_s == pytest.approx(300.0)
    rate.observe(30.0, 0.2)
    assert rate.audio_s_per_s == pytest.approx(0.8 * 300 + 0.2 * 150)  # a moving average
    with pytest.raises(PayloadTooLargeError):
        admit_long(3540.0, rate, 10.0, [])  # 3,540 s at 270x: 13.1 s
    ahead = [LongJob(2000.0, rate), LongJob(1000.0, rate)]  # 11.1 s of work ahead
    assert admit_long(1000.0, rate, 20.0, ahead).remaining_s == pytest.approx(1000 / 270)
    with pytest.raises(QueueFullError):
        admit_long(3000.0, rate, 20.0, ahead)  # 11.1 + 11.1 s > 20 s


def test_short_batches_go_first_and_long_ones_run_a_window_at_a_time(registry_root) -> None:
    config = ServiceConfig(registry=registry_root)
    assert config.long_audio_batch_audio_s >= config.long_audio_window_s + config.long_audio_overlap_s
    assert config.long_audio_batch_audio_s < 2 * config.long_audio_window_s  # one window per long batch


# ---- the memory budget ----


def test_the_budget_refuses_growth_beyond_its_limit_and_frees_on_release() -> None:
    budget = AudioBudget(100.0)
    first = budget.reserve(150.0, "request")  # alone, anything within the duration limit runs
    with pytest.raises(MemoryBudgetError, match="this stream needs 1 s more"):
        budget.reserve(1.0, "stream")
    first.release()
    with budget.reserve(60.0, "request") as second:
        stream = budget.reserve(0.0, "stream")
        stream.resize(40.0)
        with pytest.raises(MemoryBudgetError):
            stream.resize(41.0)
        assert stream.seconds == 40.0 and budget.held_s == 100.0
        stream.resize(10.0)
        assert budget.held_s == 70.0
        stream.release()
        assert second.seconds == 60.0
    assert budget.held_s == 0.0


def test_the_budget_returns_to_exactly_zero_whatever_the_order_of_its_amounts() -> None:
    """In floats 0.1 + 0.2 - 0.1 - 0.2 is 2.8e-17: a residue that reads as "something is held" and refuses the one
    request the budget must always let run alone (a stream's resizes make such sums all day)."""
    budget = AudioBudget(10.0)
    first, second = budget.reserve(0.1, "stream"), budget.reserve(0.2, "stream")
    second.resize(1 / 3)
    second.resize(0.7)
    first.release()
    second.release()
    assert budget.held_s == 0.0
    budget.reserve(50.0, "request").release()  # alone again: it runs though it is over the limit
