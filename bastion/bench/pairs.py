"""How every comparing bench runs its sides and states the result: in pairs, in ABBA order, as
the median of the pairs' ratios with a distribution-free 95% interval.

* **Order.** Pair i runs the sides in their order when i is even and reversed when it is odd
  (A B, B A, A B, ...: ABBA), so a machine that drifts during the run (this VM's memory speed
  moves by up to a third) weighs on every side alike; one pair's runs are adjacent in time.
* **Ratio.** Each pair gives one ratio per metric: side / baseline (the first side) of that
  pair. The result is the median of those ratios, with the interval between two order
  statistics that holds the true median with at least 95% probability whatever the
  distribution (the sign-test interval: coverage 1 - 2 P(Binomial(n, 1/2) <= k - 1) for the
  k-th smallest and k-th largest). It needs 6 pairs or more; with fewer the interval is the
  range of the ratios and says its lower coverage.
* **How many pairs.** `--pairs N` at least (default 6, the fewest that give a 95% interval);
  with `--target-precision P` the bench goes on, up to `--max-pairs`, until the primary
  metric's interval lies within P of its median on both sides: the measured noise chooses.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from statistics import median
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
CONFIDENCE = 0.95
MIN_PAIRS_FOR_95 = 6


def add_pair_args(parser: argparse.ArgumentParser, default_pairs: int = MIN_PAIRS_FOR_95,
                  what: str = "runs") -> None:
    """--pairs, --max-pairs, --target-precision (see the module's docstring)."""
    parser.add_argument("--pairs", type=int, default=default_pairs, metavar="N",
                        help=f"pairs of {what}, one per side in ABBA order (A B, B A, ...); at least this "
                             f"many (default {default_pairs}; 6 or more give a 95%% interval of the median ratio)")
    parser.add_argument("--max-pairs", type=int, default=None, metavar="N",
                        help="with --target-precision: stop after this many pairs at most (default 3 x --pairs)")
    parser.add_argument("--target-precision", type=float, default=None, metavar="P",
                        help="after --pairs, go on until the primary ratio's 95%% interval lies within P "
                             "(e.g. 0.03) of its median, or --max-pairs")


@dataclass(frozen=True)
class PairPlan:
    """How many pairs to run: `pairs` at least; up to `max_pairs` while the primary ratio's
    interval is wider than `precision` (relative to its median) on either side."""

    pairs: int = MIN_PAIRS_FOR_95
    max_pairs: int = MIN_PAIRS_FOR_95
    precision: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PairPlan":
        pairs = getattr(args, "pairs", MIN_PAIRS_FOR_95)
        precision = getattr(args, "target_precision", None)
        max_pairs = getattr(args, "max_pairs", None)
        if pairs < 1:
            raise ValueError(f"--pairs must be at least 1, got {pairs}")
        if precision is not None and not 0 < precision < 1:
            raise ValueError(f"--target-precision is a fraction of the median in (0, 1), got {precision}")
        if max_pairs is None:
            max_pairs = 3 * pairs if precision is not None else pairs
        if max_pairs < pairs:
            raise ValueError(f"--max-pairs ({max_pairs}) is below --pairs ({pairs})")
        return cls(pairs, max_pairs, precision)

    def done(self, completed: int, primary_ratios: Sequence[float]) -> bool:
        """Whether to stop after `completed` pairs, given the primary metric's ratios so far."""
        if completed < self.pairs:
            return False
        if completed >= self.max_pairs or self.precision is None:
            return True
        stats = median_interval(primary_ratios)
        mid = stats["median"]
        return bool(mid) and max(mid - stats["low"], stats["high"] - mid) <= self.precision * abs(mid)


def abba_order(sides: Sequence[T], pair: int) -> list[T]:
    """The order of pair `pair`'s runs: as given for even pairs, reversed for odd ones."""
    return list(sides) if pair % 2 == 0 else list(sides)[::-1]


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """The median of `values` and the sign-test interval around it: the k-th smallest and k-th
    largest values for the largest k whose coverage is at least `confidence` (k = 1, the range,
    when n is too small; `coverage` says what it holds)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return {"median": None, "low": None, "high": None, "coverage": None, "pairs": 0}
    k = 1
    while k + 1 <= (n + 1) // 2 and _coverage(n, k + 1) >= confidence:
        k += 1
    return {"median": round(median(ordered), 4), "low": round(ordered[k - 1], 4),
            "high": round(ordered[n - k], 4), "coverage": round(_coverage(n, k), 4), "pairs": n}


def _coverage(n: int, k: int) -> float:
    """P(the k-th smallest <= median <= the k-th largest) for n values of any distribution."""
    tail = sum(math.comb(n, i) for i in range(k)) / 2 ** n
    return max(0.0, 1.0 - 2 * tail)


def ratio_stats(side_values: Sequence[float | None], base_values: Sequence[float | None]) -> dict:
    """side / base per pair (pairs where either is missing or base is 0 are left out), their
    median and interval, and the per-pair ratios."""
    ratios = [s / b for s, b in zip(side_values, base_values) if s is not None and b]
    return {**median_interval(ratios), "per_pair": [round(r, 4) for r in ratios]}


def run_pairs(names: Sequence[str], run_one: Callable[[str, int], T], plan: PairPlan,
              primary: Callable[[dict[str, list[T]]], Sequence[float]],
              time_limit: float | None = None, say: Callable[[str], None] = print) -> dict[str, list[T]]:
    """Run `run_one(name, pair)` for every side in ABBA order, pair after pair, until `plan` says
    stop (`primary(runs)` gives the primary metric's per-pair ratios so far) or `time_limit`
    seconds have passed after a completed pair. Returns each side's runs, in pair order."""
    runs: dict[str, list[T]] = {name: [] for name in names}
    started = time.monotonic()
    pair = 0
    while True:
        for name in abba_order(names, pair):
            say(f"--- pair {pair + 1}: {name}")
            runs[name].append(run_one(name, pair))
        pair += 1
        if plan.done(pair, primary(runs)):
            break
        if time_limit is not None and time.monotonic() - started > time_limit:
            say(f"stopping after {pair} pairs: --time-limit {time_limit:g} s passed")
            break
    return runs


def describe_ratio(stats: dict, digits: int = 3) -> str:
    """'0.912 [0.880, 0.951] (6 pairs)', saying the coverage when it is below 95%."""
    if stats.get("median") is None:
        return "-"
    text = (f"{stats['median']:.{digits}f} [{stats['low']:.{digits}f}, {stats['high']:.{digits}f}] "
            f"({stats['pairs']} pair{'s' * (stats['pairs'] != 1)}")
    if stats["coverage"] < CONFIDENCE:
        text += f"; the range, {stats['coverage']:.0%} coverage: too few pairs for 95%"
    return text + ")"
