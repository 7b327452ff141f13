"""Start one bastion server per variant (a name and the flags it adds) on the bench's model,
all up at once, as the sides of a comparison."""
from __future__ import annotations

import argparse
from contextlib import ExitStack
from typing import Mapping, Sequence

from bastion.bench.harness import bench_server
from bastion.bench.provenance import side_record
from bastion.bench.serve.compare import ServeSide


def start_variants(stack: ExitStack, args: argparse.Namespace, model: str, label: str,
                   variants: Mapping[str, Sequence[str]], **record) -> list[ServeSide]:
    """A side per variant, in order, each server kept up until `stack` closes; `record` adds
    keys to every side's record (e.g. ranks)."""
    sides = []
    for name, flags in variants.items():
        server = stack.enter_context(bench_server(model, args, tuple(flags)))
        sides.append(ServeSide(name, side_record(name, server.command, model=label, **record), url=server.url))
    return sides
