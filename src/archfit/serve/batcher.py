"""Dynamic batching that knows the file: requests queue per model; a group of requests that may
share an engine call (same bucket, same exact length, or any for packed files) is sent as soon as
it fills what one engine call holds (the file's batch rows; for packed files, its rows' tokens),
or when its oldest request has waited `max_delay`. The engine
runs on a worker thread, so the event loop keeps answering while it computes, and the next batch
forms meanwhile (under load, batches fill by themselves; the delay only matters when idle).

With several engine streams (`streams`), that many batches run at once, one per worker thread.

The queue is bounded: past `max_queue` queued rows, `submit` raises Overloaded (503). A request
whose client went away is dropped before it reaches an engine.

Queue policy as Triton's: a request's `timeout` parameter (microseconds; else the model's default)
bounds its wait in the queue, past it the request fails with Expired (504) without reaching an
engine; its `priority` (1 first, then 2, ...; none or 0 after every numbered level) orders the
queue, arrival order within a level."""
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


class Expired(Exception):
    """A request waited in the queue past its timeout; no engine ran it."""


def queue_policy(parameters: dict, default_timeout: float | None) -> tuple[float | None, float]:
    """Takes `timeout` (microseconds, 0: the default) and `priority` out of a request's parameters:
    (seconds it may wait queued or None, its rank in the queue: lower first)."""
    from .protocol import RequestError

    timeout, priority = parameters.pop("timeout", 0), parameters.pop("priority", 0)
    for name, value in (("timeout", timeout), ("priority", priority)):
        if type(value) is not int or value < 0:
            raise RequestError(f"parameter {name!r} must be a non-negative integer (timeout: microseconds a request "
                               f"may wait queued; priority: 1 first), got {str(value)[:40]!r}")
    return (timeout / 1e6 if timeout else default_timeout), (priority or float("inf"))


@dataclass
class Pending:
    item: Item
    future: asyncio.Future
    since: float = field(default_factory=time.perf_counter)
    counted: bool = True  # its rows are in Batcher.queued_rows
    timeout: float | None = None  # seconds it may wait queued
    priority: float = float("inf")

    @property
    def rank(self) -> tuple[float, float]:
        return self.priority, self.since


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

    def submit(self, item: Item, timeout: float | None = None, priority: float = float("inf")) -> asyncio.Future:
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
        pending = Pending(item, fut, timeout=timeout, priority=priority)
        self.pending.append(pending)
        self.queued_rows += item.rows
        self.metrics.queue.labels(self.servable.name).set(self.queued_rows)
        # a client gone away cancels its future: its rows leave the count (and the gauge) at once,
        # not when the batcher next looks at the queue
        fut.add_done_callback(lambda f: self._forget(pending) if f.cancelled() else None)
        self.wake.set()
        return fut

    def _take(self, now: float) -> list[Pending] | float:
        """The next group to run, or how long to wait for one to fill (or for a timeout to pass)."""
        for p in self.pending:
            if p.timeout is not None and not p.future.done() and now - p.since >= p.timeout:
                p.future.set_exception(Expired(
                    f"model {self.servable.name!r}: the request waited {(now - p.since) * 1e3:.0f} ms in the queue, "
                    f"past its timeout of {p.timeout * 1e3:g} ms; no engine ran it"))
        while self.pending and self.pending[0].future.done():  # dropped: gone, cancelled or expired
            self._forget(self.pending.popleft())
        if not self.pending:
            return -1.0
        cap, cost = self.servable.budget, self.servable.cost
        live = sorted((p for p in self.pending if not p.future.done()), key=lambda p: p.rank)
        load: dict = {}  # keys in the order of their first request's rank
        for p in live:
            load[p.item.key] = load.get(p.item.key, 0) + cost(p.item)
        full = [k for k, n in load.items() if n >= cap]  # (a key may be None: no sentinel)
        wait = self.pending[0].since + self.max_delay - now  # the oldest arrival's delay, whatever its rank
        if not full and wait > 0 and not self.closing:
            expiring = [p.since + p.timeout - now for p in live if p.timeout is not None]
            return min([wait, *expiring])
        key = full[0] if full else live[0].item.key
        group, filled = [], 0
        for p in live:
            if p.item.key == key and (not group or filled + cost(p.item) <= cap):
                group.append(p)
                filled += cost(p.item)
        taken = {id(p) for p in group}
        for p in self.pending:
            if p.future.done():
                self._forget(p)
        self.pending = deque(p for p in self.pending if id(p) not in taken and not p.future.done())
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
