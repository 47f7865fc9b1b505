"""Interleaved timing, one method for compile-time choices (auto, per_partition, the payoff of
each partition, host threads, packing strategies) and for `archfit bench` and benchmarks/: rounds
of bursts, rotated, each burst's first call untimed. `fastest` is the one "measure and keep the
fastest" every compile-time choice calls."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

NOTHING = object()  # `keep` of a choice with no incumbent


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


def interleaved_samples(calls: dict[Any, Callable[[], object]], seconds_per_burst: float, rounds: int,
                        min_calls: int = 2, start: int = 0, max_calls: int | None = None) -> dict[Any, list[float]]:
    """Every timed call's seconds, per candidate: `rounds` rounds, each a burst of calls per
    candidate (about `seconds_per_burst`, at least `min_calls` timed) whose first call is not
    timed. Call-by-call alternation would time each engine against the last one's idle workers:
    ONNX Runtime's spin after a call, and on BERT-base that doubled both candidates' times and
    picked the slower one. Each round starts one candidate later, so none always runs first or
    after the same neighbour: a host whose speed moves between bursts (on DLRM, two bursts of one
    engine in one round measured 0.60 and 0.47 ms) then favours none. `start`: the first round's
    number, for a caller that runs the rounds one call at a time and keeps them apart. `max_calls`
    ends a burst early: a fast call's median settles long before the burst's time is up."""
    times: dict[Any, list[float]] = {k: [] for k in calls}
    order = list(calls)
    for r in range(start, start + rounds):
        for k in order[r % len(order):] + order[:r % len(order)]:
            call = calls[k]
            call()  # untimed: first-call allocations, and the previous candidate's workers settle
            end, n = time.perf_counter() + seconds_per_burst, 0
            while n < min_calls or (time.perf_counter() < end and (max_calls is None or n < max_calls)):
                t0 = time.perf_counter()
                call()
                times[k].append(time.perf_counter() - t0)
                n += 1
    return times


def interleaved_rounds(calls: dict[Any, Callable[[], object]], seconds_per_burst: float, rounds: int,
                       min_calls: int = 3, max_calls: int | None = None) -> list[dict[Any, list[float]]]:
    """interleaved_samples, each round's samples kept apart: two calls pair up round by round (both
    met the same host within a round; between rounds its speed moves by more than the gaps measured)."""
    return [interleaved_samples(calls, seconds_per_burst, 1, min_calls, start=n, max_calls=max_calls)
            for n in range(rounds)]


def interleaved_ms(calls: dict[Any, Callable[[], object]], seconds: float, rounds: int = 3,
                   min_calls: int = 2) -> dict[Any, float]:
    """Median ms of each call within about `seconds` per candidate, timed in interleaved rounds
    (interleaved_samples): what compile-time choices (auto, per_partition, host threads) compare."""
    samples = interleaved_samples(calls, seconds / rounds, rounds, min_calls)
    return {k: 1e3 * statistics.median(v) for k, v in samples.items()}


def settled_ms(calls: dict[Any, Callable[[], object]], seconds: float, rounds: int = 3, close: float = 0.10,
               second_rounds: int = 6, max_calls: int = 50) -> dict[Any, float]:
    """interleaved_ms, and a second look where it cannot tell: when the runner-up is within `close`
    of the fastest, or within the spread of the two's own round medians (a candidate whose speed
    moves from burst to burst), those two are timed again, alone, over `second_rounds` more rounds
    (bursts of the same length, at most `max_calls` calls), and their figures become the median of
    those rounds' medians. One look of about a second cannot separate engines a few % apart: on VGG16
    (2026-12-03) it put onnxruntime at 85.83 ms against openvino's 87.16 and target="auto" chose
    it, while the two timed alone for 6 rounds of 3 s had openvino ahead. Nor can it time an engine
    whose speed moves: all-MiniLM-L6-v2's int8 engine read 26.7 ms against bf16's 37.8 in one
    look (2026-12-07, an AMX host), where 3 s bursts put int8 at 26.6-37.0 and bf16 at 25.2-27.9."""
    looks = interleaved_rounds(calls, seconds / rounds, rounds, min_calls=2)
    per_round = {k: [statistics.median(look[k]) for look in looks] for k in calls}
    ms = {k: 1e3 * statistics.median([t for look in looks for t in look[k]]) for k in calls}
    if len(ms) < 2:
        return ms
    first, second = sorted(ms, key=ms.get)[:2]
    spread = max(max(per_round[k]) / min(per_round[k]) - 1 for k in (first, second))
    if ms[second] > ms[first] * (1 + max(close, spread)):
        return ms
    looks = interleaved_rounds({k: calls[k] for k in (first, second)}, seconds / rounds, second_rounds,
                               max_calls=max_calls)
    return ms | {k: 1e3 * statistics.median([statistics.median(look[k]) for look in looks]) for k in (first, second)}


def pick(ms: dict[Any, float], keep: Any = NOTHING, margin: float = 0.0) -> Any:
    """The fastest of `ms`; where there is an incumbent (`keep`), it stays unless the fastest
    beats it by more than `margin` (a share of its time): a switch decided by timing noise costs
    more than a tie kept."""
    best = min(ms, key=ms.get)
    if keep is not NOTHING and best != keep and not ms[best] < ms[keep] * (1 - margin):
        return keep
    return best


@dataclass(frozen=True)
class Fastest:
    best: Any  # the key chosen
    ms: dict[Any, float]  # what each candidate measured, median ms a call


def fastest(calls: dict[Any, Callable[[], object]], seconds: float, *, keep: Any = NOTHING, margin: float = 0.0,
            settle: bool = False, min_calls: int = 2) -> Fastest:
    """Measure the candidates interleaved for about `seconds` each and keep the fastest (see pick).
    settle: a second look at the two fastest when they are close (settled_ms), where the choice
    is between whole engines that a one-second look cannot separate."""
    ms = settled_ms(calls, seconds) if settle else interleaved_ms(calls, seconds, min_calls=min_calls)
    return Fastest(pick(ms, keep, margin), ms)
