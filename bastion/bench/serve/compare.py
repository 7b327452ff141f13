"""The one way `bench serve` compares deployments: every side up at once, an untimed warm-up
for each, then pairs of timed runs in ABBA order (`pairs.py`), each pair with requests of its
own (the workload drawn with seed `--workload-seed + pair`, so no pair is served from an
earlier pair's prefix cache, and both sides of a pair get the same requests), and each later
side's ratio to every earlier one as the median of the pairs' ratios with its 95% interval.

Metrics compared: output tokens/s (above 1: the side is faster), and TTFT p50, TPOT p50 (time
per output token: a request's first token to its last over the tokens after the first) and
ITL p50 (per token: a merged chunk's gap shared among its tokens), where below 1 is faster.
"""
from __future__ import annotations

import argparse
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

from bastion.bench.pairs import PairPlan, describe_ratio, ratio_stats, run_pairs
from bastion.bench.load import measure_serving
from bastion.bench.workloads import BenchRequest, pair_requests, warmup_requests

# (key in a run's summary, label, whether higher is better)
METRICS = (("output_tokens_per_s", "output tok/s", True), ("ttft_ms.p50", "TTFT p50", False),
           ("tpot_ms.p50", "TPOT p50", False), ("itl_ms.p50", "ITL p50", False))
PRIMARY = "output_tokens_per_s"


@dataclass
class ServeSide:
    """One deployment measured: a server at `url` (reached with `client`'s flags, default the
    bench's), or an in-process `run(args, requests) -> summary`; `record` is what the JSON says
    of it."""

    name: str
    record: dict
    url: str | None = None
    client: argparse.Namespace | None = None
    run: Callable[[argparse.Namespace, list[BenchRequest]], dict] | None = None
    extra: dict = field(default_factory=dict)  # what a mode adds to this side's JSON after the runs

    def measure(self, args: argparse.Namespace, reqs: list[BenchRequest]) -> dict:
        if self.run is not None:
            return self.run(args, reqs)
        client = args if self.client is None else argparse.Namespace(
            **{**vars(self.client), "concurrency": args.concurrency, "request_rate": args.request_rate})
        return measure_serving(self.url, client, reqs, warmup=[])


# Sides that a mode starts anew for each concurrency (llama-server's -np is the concurrency),
# put before the sides that stay up: (args for this concurrency, the stack that stops them).
PerConcurrency = Callable[[argparse.Namespace, ExitStack], list[ServeSide]]


def at_concurrency(args: argparse.Namespace, concurrency: int) -> argparse.Namespace:
    """The bench's flags with one concurrency (--concurrency may list several)."""
    return argparse.Namespace(**{**vars(args), "concurrency": concurrency})


def over_concurrencies(args: argparse.Namespace, vocab: int, sides: list[ServeSide],
                       per_concurrency: PerConcurrency | None = None) -> dict:
    """`compare_sides` once per --concurrency (the sides that stay up, after any started for
    that concurrency alone); the comparisons by concurrency."""
    out = {}
    for concurrency in args.concurrency:
        at = at_concurrency(args, concurrency)
        print(f"=== concurrency {concurrency}")
        with ExitStack() as stack:
            fresh = per_concurrency(at, stack) if per_concurrency else []
            out[str(concurrency)] = compare_sides(fresh + sides, at, pair_requests(at, vocab),
                                                  warmup_requests(at, vocab))
    return out


def metric(summary: dict, key: str) -> float | None:
    """A run's value of `key` ('ttft_ms.p50' reaches into the nested percentiles)."""
    value = summary
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) and value > 0 else None


def compare_sides(sides: list[ServeSide], args: argparse.Namespace,
                  requests_of_pair: Callable[[int], list[BenchRequest]],
                  warmup: list[BenchRequest]) -> dict:
    """Warm every side up, run the pairs, and return the comparison (ratios of every later side
    over every earlier one, each side's runs and records)."""
    plan = PairPlan.from_args(args)
    by_name = {side.name: side for side in sides}
    for side in sides:
        print(f"--- {side.name} ({side.url or 'in-process'}): warm-up ({len(warmup)} requests, not timed)")
        side.measure(args, warmup)
    cache: dict[int, list[BenchRequest]] = {}

    def run_one(name: str, pair: int) -> dict:
        reqs = cache.setdefault(pair, requests_of_pair(pair))
        return by_name[name].measure(args, reqs)

    names = [side.name for side in sides]
    first, second = names[0], names[1]

    def primary(runs: dict[str, list[dict]]) -> list[float]:
        return ratio_stats([metric(r, PRIMARY) for r in runs[second]],
                           [metric(r, PRIMARY) for r in runs[first]])["per_pair"]
    runs = run_pairs(names, run_one, plan, primary, getattr(args, "time_limit", None))
    result = {"sides": [{**side.record, "url": side.url, **side.extra} for side in sides], "pairs": len(runs[first]),
              "order": "ABBA: pair i runs the sides in order for even i, reversed for odd i",
              "runs": runs, "medians": {name: _medians(runs[name]) for name in names},
              "ratios": _ratios(names, runs),
              "errors": sum(r.get("errors", 0) for name in names for r in runs[name])}
    print_comparison(result)
    return result


def _medians(runs: list[dict]) -> dict:
    """Each metric's median over a side's runs."""
    from statistics import median

    out = {}
    for key, _, _ in METRICS:
        values = [v for v in (metric(r, key) for r in runs) if v is not None]
        out[key] = round(median(values), 3) if values else None
    return out


def _ratios(names: list[str], runs: dict[str, list[dict]]) -> dict:
    """'B/A' for every side B after side A: each metric's ratio statistics over the pairs."""
    out = {}
    for j, later in enumerate(names):
        for earlier in names[:j]:
            out[f"{later}/{earlier}"] = {
                key: ratio_stats([metric(r, key) for r in runs[later]], [metric(r, key) for r in runs[earlier]])
                for key, _, _ in METRICS}
    return out


def print_comparison(result: dict) -> None:
    """Each side's medians, then each ratio's median [95% interval] over the pairs."""
    names = [side["name"] for side in result["sides"]]
    width = max(len(n) for n in names)
    print(f"\n{result['pairs']} pairs, ABBA order; medians over each side's runs:")
    print(f"{'side':<{width}} " + " ".join(f"{label:>14}" for _, label, _ in METRICS))
    for name in names:
        med = result["medians"][name]
        print(f"{name:<{width}} " + " ".join(f"{_num(med[key]):>14}" for key, _, _ in METRICS))
    print("ratios, median of the pairs' ratios [95% interval] (tok/s: above 1 is faster; TTFT/TPOT/ITL: "
          "below 1 is faster):")
    for pair, stats in result["ratios"].items():
        for key, label, _ in METRICS:
            if stats[key]["pairs"]:
                print(f"  {pair} {label}: {describe_ratio(stats[key])}")
    print(f"errors: {result['errors']}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
