"""`bastion bench throughput`: bastion's engine and transformers side by side, in one run."""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import tempfile
import time
from pathlib import Path

from bastion.bench.workloads import BenchRequest, mixed_workload, shared_prefix_workload

logger = logging.getLogger(__name__)


def add_throughput_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="local model folder (default: the demo model)")
    parser.add_argument("--synthetic-110m", action="store_true",
                        help="build a random ~110M-parameter Llama in bfloat16 and use it")
    parser.add_argument("--workload", choices=["mixed", "shared-prefix"], default="mixed",
                        help="mixed: 128 requests, prompts 32-512, outputs 16-256 tokens; "
                             "shared-prefix: 64 requests sharing a 384-token prefix, 64 new tokens each")
    parser.add_argument("--num-requests", type=int, default=None, help="override the request count")
    parser.add_argument("--workload-seed", type=int, default=0, help="seed of the workload")
    parser.add_argument("--hf-batch-size", type=int, default=16, help="static-batch size of the baseline")
    parser.add_argument("--skip-hf", action="store_true", help="measure bastion only")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")


def run_bastion(engine, reqs: list[BenchRequest], prefix: str = "b") -> tuple[int, float, float]:
    """Run every request through `engine`; return (output tokens, seconds, engine overhead)."""
    from bastion.sampling_params import SamplingParams

    forward_before = engine.runner.forward_seconds
    started = time.perf_counter()
    for i, r in enumerate(reqs):
        engine.add_request(f"{prefix}{i}", r.prompt_token_ids,
                           SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True))
    produced = 0
    while engine.has_unfinished:
        produced += sum(len(o.new_token_ids) for o in engine.step())
    wall = time.perf_counter() - started
    forward = engine.runner.forward_seconds - forward_before
    return produced, wall, max(0.0, 1.0 - forward / wall)


def _warmup_requests(vocab: int) -> list[BenchRequest]:
    return mixed_workload(4, vocab, seed=99, prompt_range=(16, 64), output_range=(4, 8))


def warm_engine(model: str, args: argparse.Namespace, **overrides):
    """An engine from the bench's engine flags, warmed up, with an empty prefix cache."""
    from bastion.args.engine import engine_config
    from bastion.engine.core import EngineCore

    config = engine_config(model, args)
    if overrides:
        config = dataclasses.replace(config, cache=dataclasses.replace(config.cache, **overrides))
    engine = EngineCore(config)
    run_bastion(engine, _warmup_requests(engine.limits.vocab_size), prefix="warm")
    engine.blocks.reset_prefix_cache()
    return engine


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def bench_mixed(model: str, args: argparse.Namespace) -> dict:
    engine = warm_engine(model, args)
    reqs = mixed_workload(args.num_requests or 128, engine.limits.vocab_size, args.workload_seed)
    tokens, secs, overhead = run_bastion(engine, reqs)
    ours = _rate(tokens, secs)
    print(f"bastion:              {ours:9.1f} output tok/s  ({tokens} tokens in {secs:.1f}s, "
          f"engine overhead {overhead:.1%}, {str(engine.runner.dtype).removeprefix('torch.')})")
    # NOTE: transformers runs in the dtype bastion computes in (float32 for bfloat16 weights on
    # CPUs without bf16 units), so kernels of the same precision are compared.
    dtype = engine.runner.dtype
    del engine
    gc.collect()
    static = cb = None
    if not args.skip_hf:
        static, cb = _hf_rates(model, dtype, reqs, args.hf_batch_size)
    result = {"workload": "mixed", "num_requests": len(reqs), "bastion_tokens_per_s": round(ours, 2),
              "hf_static_tokens_per_s": static, "hf_cb_tokens_per_s": cb,
              "speedup_vs_hf_static": _ratio(ours, static), "speedup_vs_hf_cb": _ratio(ours, cb),
              "engine_overhead": round(overhead, 4), "dtype": str(dtype).removeprefix("torch.")}
    print(f"speedup vs static: {result['speedup_vs_hf_static']}  vs continuous: {result['speedup_vs_hf_cb']}")
    return result


def _hf_rates(model: str, dtype, reqs: list[BenchRequest], batch_size: int):
    from bastion.bench.hf_baselines import hf_continuous, hf_static, load_hf_model

    hf = load_hf_model(model, dtype)
    vocab = hf.config.vocab_size
    hf_static(hf, _warmup_requests(vocab), batch_size)
    tokens, secs = hf_static(hf, reqs, batch_size)
    static = round(_rate(tokens, secs), 2)
    print(f"transformers static:  {static:9.1f} output tok/s  ({tokens} tokens in {secs:.1f}s, "
          f"batches of {batch_size})")
    cb = None
    try:
        hf_continuous(hf, _warmup_requests(vocab))
        measured = hf_continuous(hf, reqs)
        if measured is not None:
            cb = round(_rate(*measured), 2)
            print(f"transformers CB:      {cb:9.1f} output tok/s  ({measured[0]} tokens in {measured[1]:.1f}s)")
    except Exception as exc:  # the baseline's own failure must not hide our numbers
        print(f"transformers CB:      not measured ({type(exc).__name__}: {exc})")
    return static, cb


def bench_shared_prefix(model: str, args: argparse.Namespace) -> dict:
    rates = {}
    for caching in (True, False):
        engine = warm_engine(model, args, enable_prefix_caching=caching)
        reqs = shared_prefix_workload(args.num_requests or 64, engine.limits.vocab_size, args.workload_seed)
        tokens, secs, overhead = run_bastion(engine, reqs)
        rates[caching] = _rate(tokens, secs)
        print(f"prefix caching {'on ' if caching else 'off'}: {rates[caching]:9.1f} output tok/s "
              f"({tokens} tokens in {secs:.1f}s, engine overhead {overhead:.1%})")
        del engine
        gc.collect()
    speedup = _ratio(rates[True], rates[False])
    print(f"speedup (on / off): {speedup}")
    return {"workload": "shared-prefix", "num_requests": args.num_requests or 64,
            "cache_on_tokens_per_s": round(rates[True], 2),
            "cache_off_tokens_per_s": round(rates[False], 2), "speedup": speedup}


def run_throughput_bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp:
        model = args.model
        if args.synthetic_110m:
            from bastion.bench.workloads import write_synthetic_110m
            model = str(write_synthetic_110m(Path(tmp) / "synthetic-110m"))
        elif model is None:
            from bastion.model.demo import default_model_path
            model = str(default_model_path())
        run = bench_mixed if args.workload == "mixed" else bench_shared_prefix
        result = run(model, args)
    result["model"] = "synthetic-110m" if args.synthetic_110m else model
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0
