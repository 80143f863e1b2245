"""DynamicBatcher policy with a fake batch function: size, delay, grouping, 429, deadlines, isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batcher import DynamicBatcher
from service.domain import DeadlineExceededError, QueueFullError

pytestmark = pytest.mark.anyio


class FakeBatchFn:
    """Records batches; optionally blocks until released, and fails items equal to ``bad``."""

    def __init__(self, bad=None, delay_s: float = 0.0) -> None:
        self.batches: list[list] = []
        self.bad = bad
        self.delay_s = delay_s
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list) -> list:
        self.release.wait(5)
        time.sleep(self.delay_s)
        self.batches.append(list(items))
        if self.bad is not None and self.bad in items:
            raise ValueError("poisoned batch")
        return [item * 10 for item in items]


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


async def test_full_batch_dispatches_without_waiting_for_the_delay(pool) -> None:
    fn = FakeBatchFn()
    batcher = DynamicBatcher(fn, pool, max_batch_size=4, max_queue_delay_ms=10_000)
    started = time.monotonic()
    results = await asyncio.gather(*(batcher.submit(i, size_key=1) for i in range(4)))
    assert results == [0, 10, 20, 30]
    assert fn.batches == [[0, 1, 2, 3]]
    assert time.monotonic() - started < 2.0
    await batcher.stop()


async def test_partial_batch_dispatches_after_the_delay(pool) -> None:
    fn = FakeBatchFn()
    batcher = DynamicBatcher(fn, pool, max_batch_size=8, max_queue_delay_ms=50)
    started = time.monotonic()
    assert await asyncio.gather(*(batcher.submit(i, size_key=1) for i in range(3))) == [0, 10, 20]
    assert fn.batches == [[0, 1, 2]]
    assert time.monotonic() - started >= 0.045
    await batcher.stop()


async def test_batches_group_items_of_similar_length(pool) -> None:
    fn = FakeBatchFn()
    fn.release.clear()  # hold the first batch so the rest queue up together
    batcher = DynamicBatcher(fn, pool, max_batch_size=3, max_queue_delay_ms=1, max_concurrent_batches=1)
    first = asyncio.ensure_future(batcher.submit(0, size_key=0))
    await asyncio.sleep(0.05)
    lengths = {1: 100, 2: 5000, 3: 110, 4: 5100, 5: 90, 6: 4900}
    rest = [asyncio.ensure_future(batcher.submit(i, size_key=n)) for i, n in lengths.items()]
    await asyncio.sleep(0.05)
    fn.release.set()
    await asyncio.gather(first, *rest)
    assert fn.batches[0] == [0]
    assert sorted(map(sorted, fn.batches[1:])) == [[1, 3, 5], [2, 4, 6]]
    await batcher.stop()


async def test_full_queue_rejects_immediately(pool) -> None:
    fn = FakeBatchFn()
    fn.release.clear()
    batcher = DynamicBatcher(fn, pool, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
    running = asyncio.ensure_future(batcher.submit(0, size_key=1))
    await asyncio.sleep(0.05)  # item 0 is now running, not queued
    queued = [asyncio.ensure_future(batcher.submit(i, size_key=1)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFullError):
        await batcher.submit(3, size_key=1)
    fn.release.set()
    assert await asyncio.gather(running, *queued) == [0, 10, 20]
    await batcher.stop()


async def test_expired_items_are_dropped_before_dispatch(pool) -> None:
    fn = FakeBatchFn()
    fn.release.clear()
    batcher = DynamicBatcher(fn, pool, max_batch_size=4, max_queue_delay_ms=0, max_concurrent_batches=1)
    blocker = asyncio.ensure_future(batcher.submit(0, size_key=1))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        # The worker is still blocked: the sweep must not wait for the batch to finish.
        await batcher.submit(1, size_key=1, deadline=time.monotonic() + 0.1)
    assert time.monotonic() - started < 1.0
    fn.release.set()
    assert await blocker == 0
    assert [1] not in fn.batches
    await batcher.stop()


async def test_a_failing_item_does_not_fail_its_batch(pool) -> None:
    fn = FakeBatchFn(bad=2)
    batcher = DynamicBatcher(fn, pool, max_batch_size=4, max_queue_delay_ms=1000)
    results = await asyncio.gather(*(batcher.submit(i, size_key=1) for i in range(4)), return_exceptions=True)
    assert results[0] == 0 and results[1] == 10 and results[3] == 30
    assert isinstance(results[2], ValueError)
    await batcher.stop()


async def test_per_item_exceptions_and_wrong_result_count(pool) -> None:
    batcher = DynamicBatcher(lambda items: [KeyError("x") if i == 1 else i for i in items], pool,
                             max_batch_size=2, max_queue_delay_ms=1000)
    results = await asyncio.gather(batcher.submit(0, size_key=1), batcher.submit(1, size_key=1),
                                   return_exceptions=True)
    assert results[0] == 0 and isinstance(results[1], KeyError)
    broken = DynamicBatcher(lambda items: [], pool, max_batch_size=1)
    with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
        await broken.submit(0, size_key=1)
    await batcher.stop()
    await broken.stop()


def test_batcher_imports_neither_torch_nor_model() -> None:
    import subprocess
    import sys

    code = "import sys, service.batcher; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'model')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
