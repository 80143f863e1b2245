"""DynamicBatcher policy with a fake batch function: size, delay, grouping, 429, deadlines, isolation."""

from __future__ import annotations

import asyncio
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import pytest

import service.batcher as batcher_module
from service.batcher import BatcherHooks, DynamicBatcher
from service.domain import DeadlineExceededError, QueueFullError

pytestmark = pytest.mark.anyio

# Deadline for something that should happen within a few event-loop steps; it only bounds how long a
# broken batcher hangs the test, no test measures how long anything took.
WAIT_S = 5.0


class FakeBatchFn:
    """Records batches; optionally blocks until released, and fails items equal to ``bad``."""

    def __init__(self, bad=None) -> None:
        self.batches: list[list] = []
        self.bad = bad
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()  # set when a batch reaches the function

    def __call__(self, items: list) -> list:
        self.started.set()
        self.release.wait(WAIT_S)
        self.batches.append(list(items))
        if self.bad is not None and self.bad in items:
            raise ValueError("poisoned batch")
        return [item * 10 for item in items]


class FakeClock:
    """A ``time.monotonic`` that moves only when told to (the batcher's view of time); counts its reads."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        return self.now


async def wait_until(condition, what: str) -> None:
    """Polls ``condition()`` every millisecond until it holds, failing after ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def start_held(pool, item: int = 0, size_key: int = 1, **options):
    """A batcher over a FakeBatchFn that holds its first batch, ``item``, running; returns (fn, batcher, future)."""
    fn = FakeBatchFn()
    fn.release.clear()
    batcher = DynamicBatcher(fn, pool, **options)
    future = asyncio.ensure_future(batcher.submit(item, size_key=size_key))
    await asyncio.to_thread(fn.started.wait, WAIT_S)
    assert fn.started.is_set(), "the held batch never started"
    return fn, batcher, future


async def settle() -> None:
    """A few event-loop steps, so the dispatcher acts on everything submitted so far."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


async def test_full_batch_dispatches_without_waiting_for_the_delay(pool) -> None:
    fn = FakeBatchFn()
    sizes: list[int] = []
    # A delay no test run reaches: only reaching max_batch_size can dispatch these items.
    batcher = DynamicBatcher(fn, pool, max_batch_size=4, max_queue_delay_ms=3_600_000,
                             hooks=BatcherHooks(on_batch=sizes.append))
    waiting = [asyncio.ensure_future(batcher.submit(i, size_key=1)) for i in range(3)]
    await wait_until(lambda: batcher.queue_depth == 3, "three queued items")
    await settle()
    assert sizes == [] and not any(f.done() for f in waiting)  # a partial batch waits for the delay
    results = await asyncio.wait_for(asyncio.gather(*waiting, batcher.submit(3, size_key=1)), WAIT_S)
    assert results == [0, 10, 20, 30]
    assert fn.batches == [[0, 1, 2, 3]] and sizes == [4]
    await batcher.stop()


async def test_partial_batch_dispatches_after_the_delay(pool, monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(batcher_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    fn = FakeBatchFn()
    waits: list[float] = []
    sizes: list[int] = []
    # While items wait, the dispatcher sleeps until the oldest is due and then reads the clock again;
    # with the fake clock short of the delay it finds it not due yet and sleeps again (20 ms real each).
    batcher = DynamicBatcher(fn, pool, max_batch_size=8, max_queue_delay_ms=20,
                             hooks=BatcherHooks(on_queue_wait=waits.append, on_batch=sizes.append))
    pending = asyncio.ensure_future(asyncio.gather(*(batcher.submit(i, size_key=1) for i in range(3))))
    await wait_until(lambda: batcher.queue_depth == 3, "three queued items")
    clock.now += 0.019
    reads = clock.reads
    await wait_until(lambda: clock.reads >= reads + 2, "two re-checks of the clock")  # 1 ms short of the delay
    assert sizes == [] and not pending.done()
    clock.now += 0.001
    assert await asyncio.wait_for(pending, WAIT_S) == [0, 10, 20]
    assert fn.batches == [[0, 1, 2]] and sizes == [3]
    assert waits == [pytest.approx(0.02)] * 3  # dispatched when the oldest had waited exactly the delay
    await batcher.stop()


async def test_batches_group_items_of_similar_length(pool) -> None:
    # The first batch is held, so the rest queue up together.
    fn, batcher, first = await start_held(pool, size_key=0, max_batch_size=3, max_queue_delay_ms=1,
                                          max_concurrent_batches=1)
    lengths = {1: 100, 2: 5000, 3: 110, 4: 5100, 5: 90, 6: 4900}
    rest = [asyncio.ensure_future(batcher.submit(i, size_key=n)) for i, n in lengths.items()]
    await wait_until(lambda: batcher.queue_depth == len(lengths), "the other items to queue")
    fn.release.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), WAIT_S)
    assert fn.batches[0] == [0]
    assert sorted(map(sorted, fn.batches[1:])) == [[1, 3, 5], [2, 4, 6]]
    await batcher.stop()


async def test_full_queue_rejects_immediately(pool) -> None:
    # Item 0 is running, not queued.
    fn, batcher, running = await start_held(pool, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
    queued = [asyncio.ensure_future(batcher.submit(i, size_key=1)) for i in (1, 2)]
    await wait_until(lambda: batcher.queue_depth == 2, "two queued items")
    rejected = batcher.submit(3, size_key=1)
    with pytest.raises(QueueFullError):
        rejected.send(None)  # raises on its first step: it never waits for room in the queue
    fn.release.set()
    assert await asyncio.wait_for(asyncio.gather(running, *queued), WAIT_S) == [0, 10, 20]
    await batcher.stop()


async def test_expired_items_are_dropped_before_dispatch(pool) -> None:
    fn, batcher, blocker = await start_held(pool, max_batch_size=4, max_queue_delay_ms=0, max_concurrent_batches=1)
    with pytest.raises(DeadlineExceededError):
        await batcher.submit(1, size_key=1, deadline=time.monotonic() + 0.02)
    # The worker is still blocked: the sweep did not wait for the running batch to finish.
    assert not fn.release.is_set() and fn.batches == [] and not blocker.done()
    fn.release.set()
    assert await asyncio.wait_for(blocker, WAIT_S) == 0
    assert fn.batches == [[0]]
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
    """Nothing of torch, and of model only the error taxonomy (model.errors, the standard library alone)."""
    import subprocess
    import sys

    code = "import sys, service.batcher; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'model')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['model', 'model.errors']"


async def test_an_urgent_item_goes_before_older_low_priority_ones_and_alone(pool) -> None:
    """A short request's window (priority 0) overtakes queued windows of long files (priority 1)."""
    fn, batcher, first = await start_held(pool, max_batch_size=4, max_queue_delay_ms=0, max_concurrent_batches=1)
    bulk = [asyncio.ensure_future(batcher.submit(i, size_key=1, priority=1)) for i in (1, 2, 3)]
    await wait_until(lambda: batcher.queue_depth == 3, "three long-audio windows")
    urgent = asyncio.ensure_future(batcher.submit(9, size_key=1))
    await wait_until(lambda: batcher.queue_depth == 4, "the urgent item")
    fn.release.set()
    await asyncio.wait_for(asyncio.gather(first, urgent, *bulk), WAIT_S)
    assert fn.batches == [[0], [9], [1, 2, 3]]  # never batched with the low-priority windows either
    await batcher.stop()


async def test_a_low_priority_item_that_waited_long_enough_counts_as_urgent(pool, monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(batcher_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    fn, batcher, first = await start_held(pool, max_batch_size=4, max_queue_delay_ms=0, max_concurrent_batches=1,
                                          priority_aging_s=1.0)
    old = asyncio.ensure_future(batcher.submit(1, size_key=1, priority=1))
    await wait_until(lambda: batcher.queue_depth == 1, "the long-audio window")
    clock.now += 1.0
    urgent = asyncio.ensure_future(batcher.submit(9, size_key=1))
    await wait_until(lambda: batcher.queue_depth == 2, "the urgent item")
    fn.release.set()
    await asyncio.wait_for(asyncio.gather(first, urgent, old), WAIT_S)
    assert fn.batches == [[0], [1, 9]]  # aged: as urgent as the new item, and older
    await batcher.stop()


async def test_low_priority_batches_have_their_own_padded_bound(pool) -> None:
    fn, batcher, first = await start_held(pool, max_batch_size=8, max_queue_delay_ms=0, max_concurrent_batches=1,
                                          max_batch_padded_size=400, max_low_priority_padded_size=100)
    bulk = [asyncio.ensure_future(batcher.submit(i, size_key=100, priority=1)) for i in (1, 2)]
    short = [asyncio.ensure_future(batcher.submit(i, size_key=100)) for i in (3, 4)]
    await wait_until(lambda: batcher.queue_depth == 4, "four items")
    fn.release.set()
    await asyncio.wait_for(asyncio.gather(first, *bulk, *short), WAIT_S)
    assert fn.batches == [[0], [3, 4], [1], [2]]  # 2 x 100 fits 400, not 100
    await batcher.stop()
