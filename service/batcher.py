"""DynamicBatcher: groups concurrent asyncio submissions into size-bounded, length-sorted batches.

Generic on purpose (it imports neither torch nor ``model``): items are opaque, ``size_key``
is any length-like number, and the batch function runs in a caller-supplied thread pool.
Policy follows Triton's dynamic batcher and Ray Serve's ``_BatchQueue``:

* a batch is dispatched once ``max_batch_size`` items wait, or the oldest has waited
  ``max_queue_delay_ms``, and only while fewer than ``max_concurrent_batches`` run;
* the oldest item of the most urgent priority goes first, and the rest of its batch are the
  waiting items of that priority closest to it in ``size_key``, so padding stays small; a
  window of an hour-long file (priority 1) waits while a short request's (priority 0) is
  queued, unless it has waited ``priority_aging_s`` already, so neither can starve the other;
* a full queue rejects at once (``QueueFullError``); expired deadlines are swept by the
  dispatcher's own timer, independent of batch completion (Triton server#7512);
* results are per item: the batch function returns one result or exception per item,
  and a batch that raises as a whole is retried item by item to isolate the culprit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import DeadlineExceededError, QueueFullError, ServiceUnavailableError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)

BatchFn = Callable[[list[T]], Sequence[Any]]


@dataclass(frozen=True)
class BatcherHooks:
    """Metric callbacks; each runs on the event loop and must be cheap."""

    on_queue_wait: Callable[[float], None] = lambda seconds: None
    on_batch: Callable[[int], None] = lambda size: None
    on_depth_change: Callable[[int], None] = lambda delta: None


@dataclass
class _Pending:
    item: Any
    size_key: float
    deadline: float | None
    enqueued_at: float
    priority: int
    future: asyncio.Future = field(repr=False)


class DynamicBatcher(Generic[T, R]):
    """Batches ``submit`` calls for ``batch_fn(items) -> results`` (same length, same order).

    Args:
        batch_fn: called in ``executor`` with a list of items; returns one result per item,
            where a result that is an ``Exception`` instance fails only that item.
        executor: thread pool the batch function runs in (never the event loop).
        max_batch_size: most items per batch (1 disables batching).
        max_queue_delay_ms: longest the oldest item waits for its batch to fill.
        max_queue_size: queued items beyond which ``submit`` raises ``QueueFullError``.
        max_concurrent_batches: batches running at once (usually the worker count).
        max_batch_padded_size: most ``items x largest size_key`` per batch (the padded size a batch of
            clips takes in memory); None for no bound. The oldest item always goes, even alone.
        priority_aging_s: after waiting this long, an item counts as priority 0 (most urgent).
        max_low_priority_padded_size: ``max_batch_padded_size`` for batches of priority > 0 items
            (smaller, so an urgent item never waits long for a running batch); None: the same.
        hooks: metric callbacks.
        name: used in log lines and errors.
    """

    def __init__(self, batch_fn: BatchFn, executor: Executor, *, max_batch_size: int = 16,
                 max_queue_delay_ms: float = 10.0, max_queue_size: int = 256, max_concurrent_batches: int = 1,
                 max_batch_padded_size: float | None = None, priority_aging_s: float = 1.0,
                 max_low_priority_padded_size: float | None = None, hooks: BatcherHooks | None = None,
                 name: str = "batcher") -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_concurrent_batches < 1:
            raise ValueError("max_batch_size, max_queue_size and max_concurrent_batches must be >= 1")
        self._batch_fn = batch_fn
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.max_concurrent_batches = max_concurrent_batches
        self.max_batch_padded_size = max_batch_padded_size
        self.priority_aging_s = priority_aging_s
        self.max_low_priority_padded_size = max_low_priority_padded_size
        self.hooks = hooks or BatcherHooks()
        self.name = name
        self._queue: list[_Pending] = []
        self._running_batches = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._batch_tasks: set[asyncio.Task] = set()
        self._closed = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """True while anything is queued or running."""
        return bool(self._queue) or self._running_batches > 0

    def _ensure_started(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._dispatch_loop(), name=f"{self.name}-dispatch")

    async def submit(self, item: T, *, size_key: float, deadline: float | None = None, priority: int = 0) -> R:
        """Queues ``item`` and waits for its result.

        Args:
            item: passed to the batch function as is.
            size_key: length-like number used to group similar items.
            deadline: ``time.monotonic()`` time after which the item is dropped unrun.
            priority: 0 goes first; larger numbers wait for smaller ones (see ``priority_aging_s``).

        Raises:
            QueueFullError: the queue already holds ``max_queue_size`` items.
            DeadlineExceededError: the deadline passed while the item was queued.
            ServiceUnavailableError: the batcher is stopped.
            Exception: whatever the batch function returned or raised for this item.
        """
        if self._closed:
            raise ServiceUnavailableError(f"{self.name}: not accepting work (shutting down)")
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceededError("deadline already passed before the request was queued")
        if len(self._queue) >= self.max_queue_size:
            raise QueueFullError(f"server busy: {self.max_queue_size} items already queued; retry later")
        self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, float(size_key), deadline, now, int(priority), future))
        self.hooks.on_depth_change(1)
        self._wake.set()
        return await future

    async def _dispatch_loop(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            self._drop_finished(now)
            timeout = None
            if self._queue:
                timeout = self._next_deadline(now)
                if self._running_batches < self.max_concurrent_batches:
                    ready_at = self._queue[0].enqueued_at + self.max_queue_delay_s
                    if len(self._queue) >= self.max_batch_size or now >= ready_at:
                        self._start_batch(self._take_batch())
                        continue
                    timeout = min(timeout, ready_at - now) if timeout is not None else ready_at - now
            elif self._closed:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass

    def _next_deadline(self, now: float) -> float | None:
        deadlines = [p.deadline for p in self._queue if p.deadline is not None]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _drop_finished(self, now: float) -> None:
        """Removes items whose caller gave up (cancelled) or whose deadline passed."""
        kept = []
        for p in self._queue:
            if p.future.done():
                continue
            if p.deadline is not None and p.deadline <= now:
                p.future.set_exception(DeadlineExceededError(
                    f"deadline exceeded after {now - p.enqueued_at:.3f} s in the queue (server overloaded)"))
                continue
            kept.append(p)
        if len(kept) != len(self._queue):
            self.hooks.on_depth_change(len(kept) - len(self._queue))
            self._queue = kept

    def _take_batch(self) -> list[_Pending]:
        """The oldest most urgent item plus the queued items of its priority nearest to it in size (ties: older
        first), within the bounds."""
        now = time.monotonic()
        urgency = [0 if now - p.enqueued_at >= self.priority_aging_s else p.priority for p in self._queue]
        head = min(range(len(self._queue)), key=lambda i: (urgency[i], i))
        oldest = self._queue[head]
        rest = sorted((i for i in range(len(self._queue)) if i != head and urgency[i] == urgency[head]),
                      key=lambda i: (abs(self._queue[i].size_key - oldest.size_key), i))
        chosen, largest = {head}, oldest.size_key
        bound = self.max_batch_padded_size
        if urgency[head] > 0 and self.max_low_priority_padded_size is not None:
            bound = self.max_low_priority_padded_size
        for i in rest[: self.max_batch_size - 1]:
            padded = max(largest, self._queue[i].size_key) * (len(chosen) + 1)
            if bound is not None and padded > bound:
                break  # items further away in size would pad even more
            chosen.add(i)
            largest = max(largest, self._queue[i].size_key)
        batch = [self._queue[i] for i in sorted(chosen)]
        self._queue = [p for i, p in enumerate(self._queue) if i not in chosen]
        self.hooks.on_depth_change(-len(batch))
        return batch

    def _start_batch(self, batch: list[_Pending]) -> None:
        now = time.monotonic()
        for p in batch:
            self.hooks.on_queue_wait(now - p.enqueued_at)
        self.hooks.on_batch(len(batch))
        self._running_batches += 1
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            items = [p.item for p in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._call, items)
            except Exception as exc:  # noqa: BLE001 - isolate the failing item below
                if len(batch) == 1:
                    results = [exc]
                else:
                    log.warning("%s: batch of %d failed (%s); retrying items one by one", self.name, len(batch), exc)
                    results = []
                    for item in items:
                        try:
                            results.extend(await loop.run_in_executor(self._executor, self._call, [item]))
                        except Exception as single_exc:  # noqa: BLE001
                            results.append(single_exc)
            for p, result in zip(batch, results):
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)
        finally:
            self._running_batches -= 1
            self._wake.set()

    def _call(self, items: list) -> list:
        results = list(self._batch_fn(items))
        if len(results) != len(items):
            # Ray raises the same: a mismatched batch cannot be attributed item by item.
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results

    async def stop(self) -> None:
        """Stops accepting work, lets queued and running batches finish, and ends the dispatcher."""
        self._closed = True
        if self._task is None:
            return
        self._wake.set()
        await self._task
        while self._batch_tasks:
            await asyncio.gather(*list(self._batch_tasks), return_exceptions=True)
        self._task = None
