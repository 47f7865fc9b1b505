"""Small timing helper for compile-time decisions (not for benchmarks: those live in benchmarks/)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def median_seconds(fn: Callable[[], object], budget: float = 0.25, min_reps: int = 5, max_reps: int = 200) -> float:
    """Median wall time of fn() after one warm-up call, within about `budget` seconds."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_ms(calls: dict[Any, Callable[[], object]], seconds: float) -> dict[Any, float]:
    """Median ms of each call, interleaved call by call (so a machine slowing down mid-way costs
    every candidate alike), within about `seconds` per candidate, at least 5 calls each."""
    for call in calls.values():
        call()  # warm-up: first-call allocations are not the model's speed
    times: dict[Any, list[float]] = {k: [] for k in calls}
    deadline = time.perf_counter() + seconds * len(calls)
    while min(len(v) for v in times.values()) < 5 or time.perf_counter() < deadline:
        for k, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}
