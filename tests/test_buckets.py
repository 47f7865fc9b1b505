"""Bucket chooser: exact on small histograms (brute force), never worse than the usual rules."""
import itertools
import random

import pytest

from archfit.shapes.choose import choose_buckets, evaluate
from archfit import zoo


def _brute_force(counts, k, cost):
    top = max(i + 1 for i, c in enumerate(counts) if c)
    sizes = range(1, top)
    best = min(
        (evaluate(list(b) + [top], counts, cost), tuple(b) + (top,))
        for n in range(k) for b in itertools.combinations(sizes, n)
    )
    return best


@pytest.mark.parametrize("seed", range(25))
def test_exact_against_brute_force(seed):
    rng = random.Random(seed)
    counts = [rng.choice([0, 0, 1, 2, 5, 9]) for _ in range(rng.randint(3, 12))] + [rng.randint(1, 4)]
    k = rng.randint(1, 4)
    a, b = rng.random() * 2, rng.random() * 0.2
    cost = lambda s: a * s + b * s * s + 1.0  # linear plus attention-like quadratic term  # noqa: E731
    choice = choose_buckets(counts, k, cost)
    best_cost, _ = _brute_force(counts, k, cost)
    assert choice.expected_cost == pytest.approx(best_cost)
    assert evaluate(choice.boundaries, counts, cost) == pytest.approx(choice.expected_cost)
    assert len(choice.boundaries) <= k and choice.boundaries[-1] == len(counts)


def _squad():
    return zoo.squad_lengths()


@pytest.mark.parametrize("k", [2, 4, 8])
def test_never_worse_than_even_or_power_of_two_on_squad(k):
    counts, start = _squad()
    top = start + len(counts) - 1
    choice = choose_buckets(counts, k, start=start)
    even = [round(top * (i + 1) / k) for i in range(k)]
    powers = sorted({min(top, 2 ** p) for p in range(12) if 2 ** p >= 16} | {top})[-k:]
    assert choice.expected_cost <= evaluate(even, counts, start=start) + 1e-9
    assert choice.expected_cost <= evaluate(powers, counts, start=start) + 1e-9
    assert choice.boundaries[-1] == top and 1.0 < choice.speedup <= choice.ideal_speedup


def test_one_bucket_is_pad_to_max_and_more_buckets_never_hurt():
    counts, start = _squad()
    one = choose_buckets(counts, 1, start=start)
    assert one.boundaries == (start + len(counts) - 1,) and one.speedup == pytest.approx(1.0)
    costs = [choose_buckets(counts, k, start=start).expected_cost for k in (1, 2, 4, 8, 16)]
    assert costs == sorted(costs, reverse=True)
    assert choose_buckets(counts, 8, start=start).share_of_ideal > 0.85


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="histogram"):
        choose_buckets([0, 0], 2)
    with pytest.raises(ValueError, match="must not decrease"):
        choose_buckets([1, 1, 1], 2, cost=lambda s: -s)
    with pytest.raises(ValueError, match="largest bucket 2 is below the largest length 3"):
        evaluate([2], [1, 1, 1])
