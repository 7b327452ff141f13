"""`bastion bench serve --compare-ray`: what running the ranks as Ray actors costs.

Two deployments of --model up at once: `-dp N` as local processes and `-dp N
--data-parallel-backend ray` (the cluster of `--ray-address`, else RAY_ADDRESS, else a local one
the server starts); the same requests against each in ABBA pairs (`serve/compare.py`). The
ratio reads ray / local (target: at least 0.95).
"""
from __future__ import annotations

import argparse
from contextlib import ExitStack

from bastion.bench.harness import bench_server
from bastion.bench.provenance import side_record
from bastion.bench.serve.compare import ServeSide, over_concurrencies
from bastion.bench.workloads import bench_inputs


def compare_ray(args: argparse.Namespace) -> dict:
    if args.ranks < 1:
        raise ValueError(f"--ranks must be at least 1, got {args.ranks}")
    ray_flags = ("--data-parallel-backend", "ray", *(("--ray-address", args.ray_address) if args.ray_address else ()))
    variants = {"local": ("-dp", str(args.ranks)), "ray": ("-dp", str(args.ranks), *ray_flags)}
    with bench_inputs(args) as (model, label, vocab), ExitStack() as stack:
        sides = []
        for name, flags in variants.items():
            server = stack.enter_context(bench_server(model, args, flags))
            sides.append(ServeSide(name, side_record(name, server.command, model=label, ranks=args.ranks),
                                   url=server.url))
        return over_concurrencies(args, vocab, sides)
