"""`bastion bench latency`: single-request latency, as vLLM's `bench latency`, but through a
server so that it compares with any OpenAI-compatible one (llama.cpp's llama-server).

For each --input-len N: requests of exactly N random token ids and max_tokens 1 -> TTFT, and
prefill tokens/s = N / TTFT p50. For each --output-len O: a short prompt and exactly O tokens
(ignore_eos) -> inter-token gaps (`gaps.py`) -> ITL p50/p99 and decode tokens/s, and the weight
bytes a token reads over ITL p50 as GB/s and as a share of the memory bandwidth measured at the
start of the run (`machine.memory_bandwidth`). Sides: `sides.py`; loops: `measure.py`; output:
`report.py`.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

from bastion.bench.harness import engine_flags
from bastion.bench.latency.args import add_latency_args, check_latency_args
from bastion.bench.latency.measure import SideFailed, measure
from bastion.bench.latency.report import print_report, ratios
from bastion.bench.latency.sides import plan_sides, start_sides
from bastion.bench.provenance import run_record, say_machine
from bastion.bench.workloads import PROMPT_VOCAB

__all__ = ["add_latency_args", "run_latency_bench"]


def run_latency_bench(args: argparse.Namespace) -> int:
    """Run the bench; 0 when every side answered every request, 1 when one failed (said why)."""
    check_latency_args(args)
    model = None
    if not args.url:
        from bastion.model.demo import default_model_path
        model = args.model or str(default_model_path())
        if not Path(model).exists():
            raise ValueError(f"MODEL {model}: no such file or folder")
    sides = plan_sides(args, model)
    record = run_record()  # NOTE: the bandwidth is measured before any server starts
    say_machine(record)
    bandwidth = record["memory_bandwidth"]
    # NOTE: SIGTERM (a timeout's kill, a background job's only stop) unwinds too, stopping the servers
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with ExitStack() as stack:
            start_sides(sides, model, args, stack)
            measure(sides, args, prompt_vocab(model), bandwidth["gb_s"])
    except (SideFailed, RuntimeError) as exc:
        print(f"bastion bench latency: error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    result = {"model": model or args.url, "batch_size": 1, "input_len": args.input_len,
              "output_len": args.output_len, "decode_input_len": args.decode_input_len,
              "num_iters": args.num_iters, "num_iters_warmup": args.num_iters_warmup,
              "record": record, "machine": record["machine"], "memory_bandwidth": bandwidth,
              "engine_flags": engine_flags(args) if model else [],
              "sides": [side.describe() for side in sides], "ratios": ratios(sides)}
    print_report(result, sides)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.output_json}")
    return 0


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def prompt_vocab(model: str | None) -> int:
    """Prompt ids are drawn below this: the model's vocabulary (at most 32000), else PROMPT_VOCAB."""
    if model is None:
        return PROMPT_VOCAB
    from bastion.model.arch import read_arch_config

    try:
        return min(read_arch_config(model).vocab_size, 32000)
    except (OSError, ValueError, KeyError):  # NOTE: a form the server reads that this helper does not
        return PROMPT_VOCAB
