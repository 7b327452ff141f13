"""`bastion bench serve --compare-internal`: what encrypting the internal sockets costs.

One run, the same requests at the same concurrency against three servers in turn: internal ipc
(the single-node default), TCP with CurveZMQ (`--internal-transport tcp`) and plain TCP
(`--internal-encryption off`). Prints output tokens/s of each and the ratios.
"""
from __future__ import annotations

import argparse

from bastion.bench.harness import bench_server
from bastion.bench.serve_load import measure_serving
from bastion.bench.workloads import PROMPT_VOCAB, workload

VARIANTS = {
    "ipc": ("--internal-transport", "ipc"),
    "tcp_curve": ("--internal-transport", "tcp"),
    "tcp_plain": ("--internal-transport", "tcp", "--internal-encryption", "off"),
}


def compare_internal(args: argparse.Namespace) -> dict:
    from bastion.model.demo import default_model_path

    model = args.model or str(default_model_path())
    reqs = workload(args, PROMPT_VOCAB)
    result: dict = {"model": model}
    for name, flags in VARIANTS.items():
        print(f"--- internal sockets: {name} ({' '.join(flags)})")
        with bench_server(model, args, flags) as url:
            result[name] = measure_serving(url, args, reqs)
    tps = {name: result[name]["output_tokens_per_s"] for name in VARIANTS}
    result["tcp_curve_over_ipc"] = round(tps["tcp_curve"] / tps["ipc"], 3) if tps["ipc"] else None
    result["tcp_curve_over_tcp_plain"] = round(tps["tcp_curve"] / tps["tcp_plain"], 3) if tps["tcp_plain"] else None
    result["errors"] = sum(result[name]["errors"] for name in VARIANTS)
    print(f"output tok/s: ipc {tps['ipc']:.1f}, tcp+curve {tps['tcp_curve']:.1f}, tcp plain "
          f"{tps['tcp_plain']:.1f}; curve/ipc {result['tcp_curve_over_ipc']}, curve/plain "
          f"{result['tcp_curve_over_tcp_plain']}")
    return result
