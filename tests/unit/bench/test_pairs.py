"""The comparing benches' shared method (bench/pairs.py): ABBA order, the median of the pairs'
ratios with its distribution-free interval, how many pairs to run, and the record's scrubbing."""
from __future__ import annotations

import argparse
import math

import pytest

from bastion.bench.pairs import PairPlan, abba_order, median_interval, ratio_stats, run_pairs
from bastion.bench.provenance import scrub


def test_pairs_alternate_their_order():
    assert [abba_order("AB", i) for i in range(4)] == [["A", "B"], ["B", "A"], ["A", "B"], ["B", "A"]]
    assert abba_order("ABC", 1) == ["C", "B", "A"]  # every side's mean position is the same


def test_the_interval_is_the_widest_order_statistics_that_hold_95_percent():
    # n = 6: only the range holds 95% (1 - 2/64 = 0.969); the next pair in would hold 0.78
    six = median_interval([1.0, 1.2, 0.9, 1.1, 1.05, 0.95])
    assert (six["median"], six["low"], six["high"], six["pairs"]) == (1.025, 0.9, 1.2, 6)
    assert six["coverage"] == pytest.approx(1 - 2 / 64, abs=1e-4)
    # n = 9: the second smallest and largest hold 1 - 2 * 10/512 = 0.961
    nine = median_interval(list(range(1, 10)))
    assert (nine["low"], nine["high"], nine["median"]) == (2, 8, 5)
    assert nine["coverage"] == pytest.approx(1 - 2 * (1 + 9) / 512, abs=1e-4) and nine["coverage"] >= 0.95
    # too few pairs: the range, and a coverage that says it falls short of 95%
    three = median_interval([3.0, 1.0, 2.0])
    assert (three["low"], three["high"], three["coverage"]) == (1.0, 3.0, 0.75)
    assert median_interval([])["median"] is None


def test_the_interval_covers_the_true_median_as_often_as_it_says():
    import random

    rng = random.Random(7)
    hits = 0
    for _ in range(2000):
        sample = [rng.lognormvariate(0, 0.3) for _ in range(12)]  # true median 1.0
        stats = median_interval(sample)
        hits += stats["low"] <= 1.0 <= stats["high"]
    assert hits / 2000 >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 2000)


def test_ratios_are_per_pair_and_skip_missing_values():
    stats = ratio_stats([2.0, None, 3.0, 4.0], [1.0, 1.0, 0.0, 2.0])
    assert stats["per_pair"] == [2.0, 2.0] and stats["median"] == 2.0


def test_the_plan_stops_at_pairs_or_when_the_interval_is_tight_enough():
    fixed = PairPlan.from_args(argparse.Namespace(pairs=6, max_pairs=None, target_precision=None))
    assert (fixed.pairs, fixed.max_pairs) == (6, 6) and not fixed.done(5, [1.0] * 5) and fixed.done(6, [1.0] * 6)
    adaptive = PairPlan.from_args(argparse.Namespace(pairs=6, max_pairs=None, target_precision=0.05))
    assert adaptive.max_pairs == 18
    assert adaptive.done(6, [1.0, 1.01, 0.99, 1.02, 0.98, 1.0])  # within 5% of the median
    assert not adaptive.done(6, [1.0, 1.3, 0.7, 1.0, 1.0, 1.0]) and adaptive.done(18, [1.0, 1.3, 0.7] * 6)
    with pytest.raises(ValueError, match="--max-pairs"):
        PairPlan.from_args(argparse.Namespace(pairs=6, max_pairs=3, target_precision=0.1))
    with pytest.raises(ValueError, match="--pairs"):
        PairPlan.from_args(argparse.Namespace(pairs=0, max_pairs=None, target_precision=None))


def test_run_pairs_runs_every_side_once_per_pair_in_abba_order():
    order = []

    def run_one(name: str, pair: int) -> float:
        order.append((pair, name))
        return 2.0 if name == "B" else 1.0
    runs = run_pairs(["A", "B"], run_one, PairPlan(3, 3), lambda got: [], say=lambda _: None)
    assert order == [(0, "A"), (0, "B"), (1, "B"), (1, "A"), (2, "A"), (2, "B")]
    assert runs == {"A": [1.0] * 3, "B": [2.0] * 3}


def test_secrets_never_reach_the_record():
    assert scrub(["bench", "serve", "--api-key", "sk-1", "--url", "u", "--api-key=sk-2"]) == \
        ["bench", "serve", "--api-key", "<hidden>", "--url", "u", "--api-key=<hidden>"]
