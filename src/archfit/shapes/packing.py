"""Sequence packing: several variable-length sequences per fixed-length row.

The algorithm is SPFHP, "shortest-pack-first histogram packing" (Krell et al., 2021, "Efficient
Sequence Packing without Cross-contamination", Graphcore's packed BERT): sequences taken longest
first, each put into the pack with the most room left (the shortest pack) if it fits there, else
into a new pack. On a histogram it is worst-fit decreasing; here it runs on the sequences
themselves so each one's place is known, with a heap keyed by room left (O(n log n)). Best-fit
decreasing (the pack with the *least* room that fits) is kept beside it for comparison:
benchmarks/packing.py measures both on the SQuAD lengths.

Online, a bounded look-ahead window of sequences is packed at a time (`pack_stream`): a larger
window packs tighter, a smaller one answers sooner."""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import OptionError


@dataclass(frozen=True)
class Pack:
    """One row: which sequences (indices into the packed list) in which order, and the
    positions they fill."""

    members: tuple[int, ...]
    used: int


def pack(lengths: Sequence[int], capacity: int, max_per_pack: int | None = None,
         method: str = "spfhp") -> list[Pack]:
    """Rows of at most `capacity` positions (and `max_per_pack` sequences) holding every sequence
    once. Each length must be 1..capacity. method: "spfhp" (shortest pack first) or "bfd"
    (best-fit decreasing)."""
    lengths = [int(n) for n in lengths]
    bad = next((n for n in lengths if not 1 <= n <= capacity), None)
    if bad is not None:
        raise OptionError(f"a sequence of length {bad} cannot be packed into rows of {capacity}")
    if method not in ("spfhp", "bfd"):
        raise OptionError(f"packing method {method!r}: choose 'spfhp' or 'bfd'")
    limit = max_per_pack or capacity
    packs: list[list[int]] = []
    used: list[int] = []
    # open packs by room left: a heap of (-room, pack) for SPFHP (most room on top), a sorted
    # list of (room, pack) for best fit (least room that fits, by bisection)
    open_: list[tuple[int, int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        if method == "spfhp":
            p = heapq.heappop(open_)[1] if open_ and -open_[0][0] >= n else None
        else:
            k = bisect.bisect_left(open_, (n, -1))
            p = open_.pop(k)[1] if k < len(open_) else None
        if p is None:  # no open pack has room for it: a new one
            p = len(packs)
            packs.append([])
            used.append(0)
        packs[p].append(i)
        used[p] += n
        if len(packs[p]) < limit and used[p] < capacity:
            room = capacity - used[p]
            if method == "spfhp":
                heapq.heappush(open_, (-room, p))
            else:
                bisect.insort(open_, (room, p))
    return [Pack(tuple(m), u) for m, u in zip(packs, used)]


def pack_stream(lengths: Iterable[int], capacity: int, lookahead: int, max_per_pack: int | None = None,
                method: str = "spfhp") -> Iterator[list[Pack]]:
    """Packs per window of `lookahead` sequences, indices counted over the whole stream."""
    window: list[int] = []
    start = 0
    for n in lengths:
        window.append(n)
        if len(window) == lookahead:
            yield [Pack(tuple(start + i for i in p.members), p.used) for p in pack(window, capacity, max_per_pack, method)]
            start += len(window)
            window = []
    if window:
        yield [Pack(tuple(start + i for i in p.members), p.used) for p in pack(window, capacity, max_per_pack, method)]


@dataclass(frozen=True)
class PackingStats:
    sequences: int
    rows: int
    fill: float  # share of row positions holding real tokens
    speedup: float  # rows that padding each sequence to capacity needs, over packed rows
    bound: float  # the same for a perfect packing: total tokens / capacity, rounded up


def packing_stats(lengths: Sequence[int], capacity: int, packs: Sequence[Pack]) -> PackingStats:
    total = int(np.sum(lengths))
    rows = len(packs)
    return PackingStats(len(lengths), rows, total / (rows * capacity), len(lengths) / rows,
                        len(lengths) / -(-total // capacity))


def lengths_from_histogram(counts: Sequence[float], start: int = 1) -> np.ndarray:
    """One length per counted sequence, from a histogram (counts[i] sequences of length start + i)."""
    counts = np.asarray(np.round(counts), dtype=np.int64)
    return np.repeat(np.arange(start, start + len(counts)), counts)
