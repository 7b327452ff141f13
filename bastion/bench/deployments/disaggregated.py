"""`bastion bench serve --compare-disaggregated`: prefill and decode on separate ranks against
the same ranks colocated.

One run, the same requests at the same concurrency against two servers of `--ranks` ranks in
turn: colocated (`-dp R`) and disaggregated (`-dp R --prefill-ranks 1`). Prints TTFT and
inter-token latency p50/p99 and output tokens/s of each, the ratios, and the KV channel's
speed (bytes pulled / time of the pulls, from the disaggregated server's metrics) against a
plain in-process copy of the same number of bytes on this machine.
"""
from __future__ import annotations

import argparse
import re
import time

import httpx

from bastion.bench.harness import bench_server
from bastion.bench.serve_load import measure_serving
from bastion.bench.workloads import bench_inputs


def compare_disaggregated(args: argparse.Namespace) -> dict:
    if args.ranks < 2:
        raise ValueError(f"--compare-disaggregated needs --ranks 2 or more (a prefill and a decode rank), got {args.ranks}")
    with bench_inputs(args) as (model, label, reqs):
        from bastion.bench.machine import machine_summary, memory_bandwidth

        result: dict = {"model": label, "ranks": args.ranks, "machine": machine_summary(),
                        "memory_bandwidth": memory_bandwidth()}
        print(f"machine: {result['machine']['cpu']}, flags {' '.join(result['machine']['cpu_flags'])}; "
              f"memory {result['memory_bandwidth']['read_gb_s']} GB/s read, "
              f"{result['memory_bandwidth']['copy_gb_s']} copy")
        sides = {"colocated": ("-dp", str(args.ranks)),
                 "disaggregated": ("-dp", str(args.ranks), "--prefill-ranks", "1")}
        for name, flags in sides.items():
            print(f"--- {name} ({' '.join(flags)})")
            with bench_server(model, args, flags) as url:
                result[name] = measure_serving(url, args, reqs)
                if name == "disaggregated":
                    result["kv_channel"] = kv_channel_speed(url)
    co, dis = result["colocated"], result["disaggregated"]
    for key in ("ttft_ms", "itl_ms"):
        for p in ("p50", "p99"):
            result[f"{key}_{p}_ratio"] = _ratio(dis[key][p], co[key][p])
    result["output_tokens_per_s_ratio"] = _ratio(dis["output_tokens_per_s"], co["output_tokens_per_s"])
    result["errors"] = co["errors"] + dis["errors"]
    kv = result["kv_channel"]
    print(f"disaggregated / colocated: TTFT p50 {result['ttft_ms_p50_ratio']}, p99 {result['ttft_ms_p99_ratio']}; "
          f"ITL p50 {result['itl_ms_p50_ratio']}, p99 {result['itl_ms_p99_ratio']}; output tok/s "
          f"{result['output_tokens_per_s_ratio']}")
    print(f"KV channel: {kv['transfers']} pulls, {kv['bytes'] / 1e6:.1f} MB, {kv['gb_per_s']} GB/s; an "
          f"in-process copy of {kv['mean_bytes'] / 1e6:.2f} MB: {kv['copy_gb_per_s']} GB/s "
          f"(channel / copy {kv['over_copy']})")
    return result


def kv_channel_speed(url: str) -> dict:
    """Bytes and time of the decode ranks' pulls (their metrics), and a plain copy's speed."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    nbytes = _metric_sum(text, "bastion_kv_transfer_bytes_total")
    seconds = _metric_sum(text, "bastion_kv_transfer_seconds_sum")
    transfers = int(_metric_sum(text, "bastion_kv_transfers_total"))
    mean = int(nbytes / transfers) if transfers else 0
    copy = copy_speed(max(mean, 1 << 20))
    speed = round(nbytes / seconds / 1e9, 3) if seconds else None
    return {"transfers": transfers, "bytes": int(nbytes), "seconds": round(seconds, 4),
            "mean_bytes": mean, "gb_per_s": speed, "copy_gb_per_s": copy,
            "over_copy": round(speed / copy, 4) if speed and copy else None}


def copy_speed(nbytes: int, repeats: int = 50) -> float:
    """GB/s of copying `nbytes` from one tensor to another in this process (the best of repeats)."""
    import torch

    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return round(nbytes / best / 1e9, 3)


def _metric_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None
