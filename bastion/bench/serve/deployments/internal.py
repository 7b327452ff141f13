"""`bastion bench serve --compare-internal`: what encrypting the internal sockets costs.

Three servers of --model up at once: internal ipc (the single-node default), TCP with CurveZMQ
(`--internal-transport tcp`) and plain TCP (`--internal-encryption off`); the same requests
against each in ABBA pairs (`serve/compare.py`). Ratios: each later variant over each earlier one.
"""
from __future__ import annotations

import argparse
from contextlib import ExitStack

from bastion.bench.serve.compare import over_concurrencies
from bastion.bench.serve.deployments.variants import start_variants
from bastion.bench.workloads import bench_inputs

VARIANTS = {
    "tcp_plain": ("--internal-transport", "tcp", "--internal-encryption", "off"),
    "tcp_curve": ("--internal-transport", "tcp"),
    "ipc": ("--internal-transport", "ipc"),
}


def compare_internal(args: argparse.Namespace) -> dict:
    with bench_inputs(args) as (model, label, vocab), ExitStack() as stack:
        sides = start_variants(stack, args, model, label, VARIANTS)
        return over_concurrencies(args, vocab, sides)
