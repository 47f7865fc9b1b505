"""Dynamic batching that knows the file: requests queue per model; a group of requests that may
share an engine call (same bucket, same exact length, or any for packed files) is sent as soon as
it fills what one engine call holds (the file's batch rows; for packed files, its rows' tokens),
or when its oldest request has waited `max_delay`. The engine
runs on a worker thread, so the event loop keeps answering while it computes, and the next batch
forms meanwhile (under load, batches fill by themselves; the delay only matters when idle).

With several engine streams (`streams`), that many batches run at once, one per worker thread.

The queue is bounded: past `max_queue` queued rows, `submit` raises Overloaded (503). A request
whose client went away is dropped before it reaches an engine."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .metrics import Metrics
from .servable import Item, Servable


log = logging.getLogger("archfit.serve")


class Overloaded(Exception):
    """The model's queue is full; the client should retry later."""


class TooManyRows(Exception):
    """One request holds more rows than the queue takes at once (--max-queue): it never fits."""


@dataclass
class Pending:
    item: Item
    future: asyncio.Future
    since: float = field(default_factory=time.perf_counter)
    counted: bool = True  # its rows are in Batcher.queued_rows


class Batcher:
    def __init__(self, servable: Servable, metrics: Metrics, max_delay: float = 0.005, max_queue: int = 256,
                 streams: int = 1):
        self.servable = servable
        self.metrics = metrics
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.pending: deque[Pending] = deque()
        self.queued_rows = 0
        # one worker thread per stream: that many batches run at once, each on its own engine stream
        self.executor = ThreadPoolExecutor(streams, thread_name_prefix=f"archfit-{servable.name}")
        self.slots = asyncio.Semaphore(streams)
        self.running: set[asyncio.Task] = set()
        self.wake = asyncio.Event()
        self.closing = False
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.servable.name}")

    async def close(self) -> None:
        """Answer everything queued, then stop."""
        self.closing = True
        self.wake.set()
        if self.task is not None:
            await self.task
        self.executor.shutdown(wait=True)

    def submit(self, item: Item) -> asyncio.Future:
        if self.closing:
            raise Overloaded(f"model {self.servable.name!r} is shutting down")
        if item.rows > self.max_queue:  # alone it would hold the engines and the memory of the whole queue
            raise TooManyRows(f"model {self.servable.name!r}: the request holds {item.rows} rows, more than the "
                              f"queue takes at once (--max-queue {self.max_queue}); split it into requests of at "
                              f"most {self.max_queue} rows")
        if self.queued_rows + item.rows > self.max_queue and self.pending:
            raise Overloaded(f"model {self.servable.name!r} has {self.queued_rows} rows queued (limit "
                             f"{self.max_queue}); retry shortly")
        fut = asyncio.get_running_loop().create_future()
        pending = Pending(item, fut)
        self.pending.append(pending)
        self.queued_rows += item.rows
        self.metrics.queue.labels(self.servable.name).set(self.queued_rows)
        # a client gone away cancels its future: its rows leave the count (and the gauge) at once,
        # not when the batcher next looks at the queue
        fut.add_done_callback(lambda f: self._forget(pending) if f.cancelled() else None)
        self.wake.set()
        return fut

    def _take(self, now: float) -> list[Pending] | float:
        """The next group to run, or how long to wait for one to fill."""
        while self.pending and self.pending[0].future.done():  # dropped: the client went away
            self._forget(self.pending.popleft())
        if not self.pending:
            return -1.0
        cap, cost = self.servable.budget, self.servable.cost
        load: dict = {}
        for p in self.pending:
            if not p.future.done():
                load[p.item.key] = load.get(p.item.key, 0) + cost(p.item)
        full = next((k for k, n in load.items() if n >= cap), None)
        oldest = self.pending[0]
        wait = oldest.since + self.max_delay - now
        if full is None and wait > 0 and not self.closing:
            return wait
        key = oldest.item.key if full is None else full
        group, filled, keep = [], 0, deque()
        for p in self.pending:
            if p.future.done():
                self._forget(p)
            elif p.item.key == key and (not group or filled + cost(p.item) <= cap):
                group.append(p)
                filled += cost(p.item)
            else:
                keep.append(p)
        self.pending = keep
        return group

    def _forget(self, p: Pending) -> None:
        """Its rows out of the queue's count, once."""
        if p.counted:
            p.counted = False
            self.queued_rows -= p.item.rows
            self.metrics.queue.labels(self.servable.name).set(self.queued_rows)

    async def _loop(self) -> None:
        while True:
            await self.slots.acquire()  # a free stream first: requests keep queueing (and grouping) meanwhile
            try:
                got = self._take(time.perf_counter())
            except Exception as e:  # noqa: BLE001 - a bug here must fail the queued requests, not hang them
                log.exception("archfit serve: batching %s failed", self.servable.name)
                failed, self.pending = self.pending, deque()
                for p in failed:
                    self._forget(p)
                    if not p.future.done():
                        p.future.set_exception(e)
                got = -1.0  # nothing queued now: wait for the next request
            if isinstance(got, float):
                self.slots.release()
                if got < 0 and self.closing:
                    await asyncio.gather(*self.running)
                    return
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), None if got < 0 else got)
                except asyncio.TimeoutError:
                    pass
                continue
            for p in got:
                self._forget(p)
            self.metrics.queue.labels(self.servable.name).set(self.queued_rows)
            task = asyncio.get_running_loop().create_task(self._run(got))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run(self, group: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            answers, stats = await loop.run_in_executor(self.executor, self.servable.run, [p.item for p in group])
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error, the loop goes on
            for p in group:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        finally:
            self.slots.release()
            self.wake.set()
        self.metrics.batch(self.servable.name, stats, time.perf_counter() - start)
        for p, a in zip(group, answers):
            if not p.future.done():
                p.future.set_result((a, stats.bucket))
