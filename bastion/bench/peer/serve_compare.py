"""`bastion bench serve --compare-url URL`: bastion and a peer under the same load, in one run.

bastion is started on --model with the engine flags; the peer (e.g. llama.cpp's `llama-server`
on the same checkpoint, started by hand: docs/benchmarks.md) is reached at URL. The same
token-id requests go to each at the same concurrency, the sides alternating --repeats times
(the order turning each round, so that neither always runs on a warmer machine). Prints and
returns each side's median run and the ratios bastion / peer.
"""
from __future__ import annotations

import argparse

from bastion.bench.harness import bench_server
from bastion.bench.serve_load import measure_serving
from bastion.bench.workloads import bench_inputs

SIDES = ("bastion", "peer")


def compare_url(args: argparse.Namespace) -> dict:
    """Run the workload against a bastion started here and against `args.compare_url`."""
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    with bench_inputs(args) as (model, label, reqs):
        runs: dict[str, list[dict]] = {side: [] for side in SIDES}
        with bench_server(model, args) as url:
            urls = {"bastion": url, "peer": args.compare_url.rstrip("/")}
            for round_ in range(args.repeats):
                for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                    print(f"--- {side} ({urls[side]}), round {round_ + 1} of {args.repeats}")
                    runs[side].append(measure_serving(urls[side], args, reqs))
    result: dict = {"model": label, "peer_url": args.compare_url, "repeats": args.repeats}
    for side in SIDES:
        result[side] = _median_run(runs[side])
        result[f"{side}_runs"] = runs[side]
    result.update(_ratios(result["bastion"], result["peer"]))
    result["errors"] = sum(run["errors"] for side in SIDES for run in runs[side])
    print(f"bastion / peer: output tok/s {result['output_tokens_per_s_ratio']}, "
          f"TTFT p50 {result['ttft_p50_ratio']}, ITL p50 {result['itl_p50_ratio']} "
          f"(medians of {args.repeats} runs each)")
    return result


def _median_run(runs: list[dict]) -> dict:
    """The run whose output tok/s is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda run: run["output_tokens_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def _ratios(ours: dict, peer: dict) -> dict:
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if a and b else None
    return {"output_tokens_per_s_ratio": ratio(ours["output_tokens_per_s"], peer["output_tokens_per_s"]),
            "ttft_p50_ratio": ratio(ours["ttft_ms"]["p50"], peer["ttft_ms"]["p50"]),
            "itl_p50_ratio": ratio(ours["itl_ms"]["p50"], peer["itl_ms"]["p50"])}
