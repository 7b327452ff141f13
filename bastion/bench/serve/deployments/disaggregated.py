"""`bastion bench serve --compare-disaggregated`: prefill and decode on separate ranks against
the same ranks colocated.

Two servers of `--ranks` ranks up at once, colocated (`-dp R`) and disaggregated (`-dp R
--prefill-ranks 1`), the same requests against each in ABBA pairs (`serve/compare.py`: TTFT,
TPOT, inter-token latency, output tokens/s, ratios disaggregated / colocated); then the KV
channel's speed (bytes pulled / time of the pulls, from the disaggregated server's metrics, all
pairs and warm-ups together) against a plain in-process copy of the same number of bytes.
"""
from __future__ import annotations

import argparse
import re
import time
from contextlib import ExitStack

import httpx

from bastion.bench.serve.compare import over_concurrencies
from bastion.bench.serve.deployments.variants import start_variants
from bastion.bench.workloads import bench_inputs


def compare_disaggregated(args: argparse.Namespace) -> dict:
    if args.ranks < 2:
        raise ValueError(f"--compare-disaggregated needs --ranks 2 or more (a prefill and a decode rank), got {args.ranks}")
    variants = {"colocated": ("-dp", str(args.ranks)),
                "disaggregated": ("-dp", str(args.ranks), "--prefill-ranks", "1")}
    with bench_inputs(args) as (model, label, vocab), ExitStack() as stack:
        sides = start_variants(stack, args, model, label, variants, ranks=args.ranks)
        result = over_concurrencies(args, vocab, sides)
        channel = kv_channel_speed(sides[1].url)
    for comparison in result.values():
        comparison["kv_channel"] = channel
    print(f"KV channel: {channel['transfers']} pulls, {channel['bytes'] / 1e6:.1f} MB, {channel['gb_per_s']} GB/s; "
          f"an in-process copy of {channel['mean_bytes'] / 1e6:.2f} MB: {channel['copy_gb_per_s']} GB/s "
          f"(channel / copy {channel['over_copy']})")
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
