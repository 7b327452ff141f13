"""`bastion bench serve --compare-internal`: what encrypting the internal sockets costs.

Three servers of --model up at once: internal ipc (the single-node default), TCP with CurveZMQ
(`--internal-transport tcp`) and plain TCP (`--internal-encryption off`); the same requests
against each in ABBA pairs (`serve/compare.py`). Ratios: each later variant over each earlier one.
"""
from __future__ import annotations

import argparse
from contextlib import ExitStack

from bastion.bench.harness import bench_server
from bastion.bench.provenance import side_record
from bastion.bench.serve.compare import ServeSide, over_concurrencies
from bastion.bench.workloads import bench_inputs

VARIANTS = {
    "tcp_plain": ("--internal-transport", "tcp", "--internal-encryption", "off"),
    "tcp_curve": ("--internal-transport", "tcp"),
    "ipc": ("--internal-transport", "ipc"),
}


def compare_internal(args: argparse.Namespace) -> dict:
    with bench_inputs(args) as (model, label, vocab), ExitStack() as stack:
        sides = []
        for name, flags in VARIANTS.items():
            server = stack.enter_context(bench_server(model, args, flags))
            sides.append(ServeSide(name, side_record(name, server.command, model=label), url=server.url))
        return over_concurrencies(args, vocab, sides)
