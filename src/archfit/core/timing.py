"""Small timing helper for compile-time decisions (not for benchmarks: those live in benchmarks/)."""
from __future__ import annotations

import statistics
import time
from typing import Callable


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
