"""`bastion bench serve --compare-ray`: what running the ranks as Ray actors costs.

Two deployments of --model up at once: `-dp N` as local processes and `-dp N
--data-parallel-backend ray` (the cluster of `--ray-address`, else RAY_ADDRESS, else a local one
the server starts); the same requests against each in ABBA pairs (`serve/compare.py`). The
ratio reads ray / local (target: at least 0.95).
"""
from __future__ import annotations

import argparse
from contextlib import ExitStack

from bastion.bench.serve.compare import over_concurrencies
from bastion.bench.serve.deployments.variants import start_variants
from bastion.bench.workloads import bench_inputs


def compare_ray(args: argparse.Namespace) -> dict:
    if args.ranks < 1:
        raise ValueError(f"--ranks must be at least 1, got {args.ranks}")
    ray_flags = ("--data-parallel-backend", "ray", *(("--ray-address", args.ray_address) if args.ray_address else ()))
    variants = {"local": ("-dp", str(args.ranks)), "ray": ("-dp", str(args.ranks), *ray_flags)}
    with bench_inputs(args) as (model, label, vocab), ExitStack() as stack:
        sides = start_variants(stack, args, model, label, variants, ranks=args.ranks)
        return over_concurrencies(args, vocab, sides)
