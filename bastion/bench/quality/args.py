"""`bastion bench quantization`'s flags and variants (light: the CLI builds every parser, and
importing the measuring code would load torch into every `bastion` command)."""
from __future__ import annotations

import argparse

# name -> (--quantization, the LM head's form when not --quantization's own: "float", "int4")
VARIANTS = {
    "bf16": (None, None),
    "int8": ("int8", None),
    "int8-float-head": ("int8", "float"),
    "int4": ("int4", None),
    "int4-int4-head": ("int4", "int4"),
    "int4-float-head": ("int4", "float"),
}


def add_quantization_bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="local model folder (default: the demo model)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="activation dtype of every variant; the first variant is the reference")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="what to measure; *-float-head / *-int4-head give the (tied) LM head "
                             "that form instead of the one --quantization gives it (int8)")
    parser.add_argument("--max-tokens", type=int, default=32, help="greedy tokens per prompt")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
