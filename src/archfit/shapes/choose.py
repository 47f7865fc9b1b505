"""Choose padding buckets from the sizes users actually see, exactly.

Inputs of length L run in the smallest bucket b >= L, costing cost(b). Given a histogram of
lengths and at most K buckets (the largest always at the maximum length, as Neuron's bucketing
guide requires), dynamic programming over the sorted candidate sizes finds the boundaries with
the least expected cost. Only observed lengths (and the maximum) need be candidates: moving a
boundary down to the largest length it actually serves never costs more when cost grows with
size. O(K * m^2) for m candidates, vectorised over one axis."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import OptionError


@dataclass(frozen=True)
class BucketChoice:
    boundaries: tuple[int, ...]  # bucket sizes, ascending; the last is the maximum length
    expected_cost: float  # per input, in the cost function's unit
    pad_to_max_cost: float  # per input with one bucket at the maximum
    exact_cost: float  # per input if every input ran at its own length (no padding at all)
    padding_waste: float  # share of computed positions that are padding

    @property
    def speedup(self) -> float:
        """Expected speedup over padding everything to the maximum."""
        return self.pad_to_max_cost / self.expected_cost

    @property
    def ideal_speedup(self) -> float:
        """What the histogram allows at best: exact lengths against pad-to-max."""
        return self.pad_to_max_cost / self.exact_cost

    @property
    def share_of_ideal(self) -> float:
        """This speedup as a share of the ideal one (1.0 = as fast as exact lengths)."""
        return self.speedup / self.ideal_speedup


def _histogram(counts: Sequence[float], start: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) == 0 or (counts < 0).any() or counts.sum() <= 0:
        raise OptionError(f"choose_buckets: counts must be a non-empty 1-d histogram (counts[i] inputs of length "
                          f"start + i) of non-negative counts with a positive total, got {str(counts.tolist())[:80]}; "
                          f"for a list of sizes seen, pass Buckets(dims, sample=sizes)")
    lengths = np.arange(start, start + len(counts))
    return lengths, counts


def _cost_array(cost, sizes: np.ndarray) -> np.ndarray:
    values = np.array([float(cost(int(s))) for s in sizes]) if callable(cost) else np.asarray(cost, dtype=np.float64)
    if np.any(np.diff(values) < 0):
        raise OptionError("cost must not decrease with size")
    return values


def evaluate(boundaries: Sequence[int], counts: Sequence[float], cost: Callable[[int], float] = float,
             start: int = 1) -> float:
    """Expected cost per input of given bucket boundaries (which must cover the maximum)."""
    lengths, counts = _histogram(counts, start)
    b = np.sort(np.asarray(boundaries))
    if b[-1] < lengths[counts > 0].max():
        raise OptionError(f"the largest bucket {b[-1]} is below the largest length {lengths[counts > 0].max()}")
    chosen = b[np.searchsorted(b, lengths)]
    mask = counts > 0
    return float((counts[mask] * _cost_array(cost, chosen[mask])).sum() / counts.sum())


def choose_buckets(counts: Sequence[float], max_buckets: int, cost: Callable[[int], float] = float,
                   start: int = 1, max_length: int | None = None) -> BucketChoice:
    """Optimal boundaries for a length histogram (counts[i] inputs of length start + i).

    cost(size) is the latency (or FLOPs) of one input run at that bucket size; the default,
    the size itself, models cost proportional to positions computed."""
    if max_buckets < 1:
        raise OptionError("max_buckets must be at least 1")
    lengths, counts = _histogram(counts, start)
    top = int(max_length if max_length is not None else lengths[counts > 0].max())
    seen = lengths[(counts > 0) & (lengths <= top)]
    candidates = np.unique(np.append(seen, top))
    c = _cost_array(cost, candidates)
    # weight[j]: inputs whose smallest fitting candidate is candidates[j]
    weight = np.array([counts[(lengths == s)].sum() for s in candidates])
    prefix = np.concatenate(([0.0], np.cumsum(weight)))  # prefix[j] = inputs up to candidates[j-1]
    m = len(candidates)
    # f[j]: least cost serving all inputs <= candidates[j], the last bucket at candidates[j]
    f = c * prefix[1:]
    parents = [np.full(m, -1)]
    best_k, best = 1, f[-1]
    for k in range(2, min(max_buckets, m) + 1):
        g = np.full(m, np.inf)
        parent = np.full(m, -1)
        for j in range(k - 1, m):
            i = np.arange(j)  # previous bucket at candidates[i], serving everything up to it
            total = f[i] + c[j] * (prefix[j + 1] - prefix[i + 1])
            a = int(np.argmin(total))
            g[j], parent[j] = total[a], a
        parents.append(parent)
        f = g
        if f[-1] < best - 1e-12:
            best_k, best = k, f[-1]
    bounds, j = [], m - 1
    for k in range(best_k, 0, -1):
        bounds.append(int(candidates[j]))
        j = parents[k - 1][j]
    boundaries = tuple(sorted(bounds))
    n = counts.sum()
    mask = counts > 0
    exact = float((counts[mask] * _cost_array(cost, lengths[mask])).sum() / n)
    chosen = np.asarray(boundaries)[np.searchsorted(boundaries, lengths[mask])]
    waste = float((counts[mask] * (chosen - lengths[mask])).sum() / (counts[mask] * chosen).sum())
    return BucketChoice(boundaries, float(best / n), float(_cost_array(cost, [top])[0]), exact, waste)


MAX_SIZE = 1 << 20  # longest size a bucket may have: a million positions, far past any model's context


@dataclass(frozen=True)
class Buckets:
    """Which input dims vary (all tied to one size) and how to choose the sizes to compile.

    Give explicit `sizes`, or the sizes seen in production as a `sample` (one size per input)
    or a `histogram` (histogram[i] inputs of size i + 1) plus `max_buckets`; archfit then picks
    the boundaries that minimise expected cost (see choose_buckets). `pad_values` maps an input
    name to the value padding uses (default 0: the pad token of BERT-style vocabularies and the
    "ignore" value of attention masks). `max_bytes` caps the bucket count by memory on targets
    that hold one copy of the weights per bucket."""

    dims: dict[str, int]
    sizes: tuple[int, ...] | None = None
    sample: tuple[int, ...] | None = None
    histogram: tuple[float, ...] | None = None
    max_buckets: int = 4
    max_size: int | None = None
    pad_values: dict[str, float] = field(default_factory=dict)
    cost: Callable[[int], float] | None = None  # per-input cost at a size; default: estimated FLOPs
    max_bytes: int | None = None

    def __post_init__(self):
        if any(s > MAX_SIZE for s in self.sizes or ()) or len(self.histogram or ()) > MAX_SIZE:
            raise OptionError(f"bucket sizes must be at most {MAX_SIZE}")
        if self.sample is not None and (not self.sample or min(self.sample) < 1 or max(self.sample) > MAX_SIZE):
            raise OptionError(f"Buckets sample= must hold the sizes seen, each from 1 to {MAX_SIZE}; got "
                              f"{min(self.sample, default=None)}..{max(self.sample, default=None)}")
        given = [x is not None for x in (self.sizes, self.sample, self.histogram)]
        if sum(given) != 1:
            raise OptionError("Buckets takes exactly one of sizes=, sample= or histogram=")
        if not self.dims:
            raise OptionError("Buckets needs dims={input name: dim} naming what varies")
        if self.sizes is not None and (not self.sizes or min(self.sizes) < 1):
            raise OptionError(f"bucket sizes must be positive, got {self.sizes}")
        if self.max_buckets < 1:
            raise OptionError("max_buckets must be at least 1")

    def counts(self) -> np.ndarray | None:
        """Histogram of observed sizes (index i = size i + 1), or None for explicit sizes."""
        if self.histogram is not None:
            return np.asarray(self.histogram, dtype=np.float64)
        if self.sample is not None:
            sample = np.asarray(self.sample, dtype=np.int64)
            if sample.size == 0 or sample.min() < 1 or sample.max() > MAX_SIZE:
                raise OptionError(f"sample must hold sizes from 1 to {MAX_SIZE}")
            return np.bincount(sample - 1).astype(np.float64)
        return None

    def top(self) -> int:
        if self.sizes is not None:
            return max(self.sizes)
        if self.max_size is not None:
            return self.max_size
        counts = self.counts()
        return int(np.nonzero(counts)[0].max()) + 1
