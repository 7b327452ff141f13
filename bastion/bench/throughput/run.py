"""`bastion bench throughput`: bastion's offline engine beside transformers (or, with the
shared-prefix workload, prefix caching on beside off), in one process, in ABBA pairs
(`pairs.py`): every side is loaded and warmed once, then pair i runs the workload drawn with seed
`--workload-seed + i` through each side in turn, in order for even i and reversed for odd i.
The ratios are the medians of the pairs' ratios with their 95% intervals; the JSON also holds
the run's record (`provenance.py`) and every run."""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Callable

from bastion.bench.harness import engine_flags
from bastion.bench.pairs import PairPlan, add_pair_args, describe_ratio, ratio_stats, run_pairs
from bastion.bench.provenance import run_record, say_machine
from bastion.bench.workloads import BenchRequest, mixed_workload, shared_prefix_workload

Run = dict  # one side's run: output_tokens, seconds, output_tokens_per_s (and engine_overhead)


def add_throughput_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="local model folder (default: the demo model)")
    parser.add_argument("--synthetic-110m", action="store_true",
                        help="build a random ~110M-parameter Llama in bfloat16 and use it")
    parser.add_argument("--workload", choices=["mixed", "shared-prefix"], default="mixed",
                        help="mixed: 128 requests, prompts 32-512, outputs 16-256 tokens; "
                             "shared-prefix: 64 requests sharing a 384-token prefix, 64 new tokens each")
    parser.add_argument("--num-requests", type=int, default=None, help="override the request count")
    parser.add_argument("--workload-seed", type=int, default=0,
                        help="seed of the workload; pair i draws its requests with seed + i")
    parser.add_argument("--hf-batch-size", type=int, default=16, help="static-batch size of the baseline")
    parser.add_argument("--skip-hf", action="store_true", help="measure bastion only (no pairs, one run)")
    add_pair_args(parser, what="runs of the workload")
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


def _run(tokens: int, seconds: float, **more) -> Run:
    return {"output_tokens": tokens, "seconds": round(seconds, 3),
            "output_tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else 0.0, **more}


def engine_side(engine, name: str) -> Callable[[list[BenchRequest]], Run]:
    """A side that runs the requests through `engine` (its prefix cache emptied first)."""
    def run(reqs: list[BenchRequest]) -> Run:
        engine.blocks.reset_prefix_cache()
        tokens, seconds, overhead = run_bastion(engine, reqs, prefix=f"{name}-{time.monotonic_ns()}-")
        print(f"{name}: {tokens / seconds:9.1f} output tok/s ({tokens} tokens in {seconds:.1f} s, "
              f"engine overhead {overhead:.1%})")
        return _run(tokens, seconds, engine_overhead=round(overhead, 4))
    return run


def hf_sides(model: str, dtype, vocab: int, batch_size: int) -> dict[str, Callable[[list[BenchRequest]], Run]]:
    """transformers' static batches and, where the installed version has it, its continuous
    batching, in the dtype bastion computes in (kernels of the same precision are compared)."""
    from bastion.bench.throughput.hf_baselines import hf_continuous, hf_static, load_hf_model

    hf = load_hf_model(model, dtype)
    hf_static(hf, _warmup_requests(vocab), batch_size)

    def static(reqs: list[BenchRequest]) -> Run:
        tokens, seconds = hf_static(hf, reqs, batch_size)
        print(f"transformers static: {tokens / seconds:9.1f} output tok/s ({tokens} tokens in {seconds:.1f} s)")
        return _run(tokens, seconds)

    def continuous(reqs: list[BenchRequest]) -> Run:
        tokens, seconds = hf_continuous(hf, reqs)
        print(f"transformers CB:     {tokens / seconds:9.1f} output tok/s ({tokens} tokens in {seconds:.1f} s)")
        return _run(tokens, seconds)
    sides = {"hf_static": static}
    try:
        if hf_continuous(hf, _warmup_requests(vocab)) is not None:
            sides["hf_cb"] = continuous
    except Exception as exc:  # the baseline's own failure must not hide our numbers
        print(f"transformers CB: not measured ({type(exc).__name__}: {exc})")
    return sides


def compare(sides: dict[str, Callable[[list[BenchRequest]], Run]], requests_of_pair, args: argparse.Namespace,
            ours: str) -> dict:
    """Run the sides in ABBA pairs; each side's runs and median, and `ours` over every other side."""
    names = list(sides)
    others = [n for n in names if n != ours]
    plan = PairPlan.from_args(args) if others else PairPlan(1, 1)
    cache: dict[int, list[BenchRequest]] = {}

    def run_one(name: str, pair: int) -> Run:
        return sides[name](cache.setdefault(pair, requests_of_pair(pair)))

    def tps(runs: list[Run]) -> list[float]:
        return [r["output_tokens_per_s"] for r in runs]
    runs = run_pairs(names, run_one, plan,
                     lambda got: ratio_stats(tps(got[ours]), tps(got[others[0]]))["per_pair"] if others else [])
    ratios = {f"{ours}/{other}": ratio_stats(tps(runs[ours]), tps(runs[other])) for other in others}
    for name, stats in ratios.items():
        print(f"{name} output tok/s: {describe_ratio(stats)}")
    return {"pairs": len(runs[ours]), "runs": runs, "ratios": ratios,
            "medians": {name: round(median(tps(runs[name])), 2) for name in names}}


def bench_mixed(model: str, args: argparse.Namespace) -> dict:
    import gc

    engine = warm_engine(model, args)
    vocab, dtype = engine.limits.vocab_size, engine.runner.dtype
    sides = {"bastion": engine_side(engine, "bastion")}
    if not args.skip_hf:
        sides.update(hf_sides(model, dtype, vocab, args.hf_batch_size))
    gc.collect()
    result = compare(sides, lambda pair: mixed_workload(args.num_requests or 128, vocab, args.workload_seed + pair),
                     args, "bastion")
    med, ratios = result["medians"], result["ratios"]
    overheads = [r["engine_overhead"] for r in result["runs"]["bastion"]]
    result.update(workload="mixed", num_requests=args.num_requests or 128, dtype=str(dtype).removeprefix("torch."),
                  bastion_tokens_per_s=med["bastion"], hf_static_tokens_per_s=med.get("hf_static"),
                  hf_cb_tokens_per_s=med.get("hf_cb"),
                  speedup_vs_hf_static=ratios.get("bastion/hf_static", {}).get("median"),
                  speedup_vs_hf_cb=ratios.get("bastion/hf_cb", {}).get("median"),
                  engine_overhead=round(median(overheads), 4))
    return result


def bench_shared_prefix(model: str, args: argparse.Namespace) -> dict:
    count = args.num_requests or 64
    engines = {name: warm_engine(model, args, enable_prefix_caching=on) for name, on in (("cache_on", True),
                                                                                        ("cache_off", False))}
    vocab = engines["cache_on"].limits.vocab_size
    sides = {name: engine_side(engine, name) for name, engine in engines.items()}
    result = compare(sides, lambda pair: shared_prefix_workload(count, vocab, args.workload_seed + pair), args,
                     "cache_on")
    result.update(workload="shared-prefix", num_requests=count,
                  cache_on_tokens_per_s=result["medians"]["cache_on"],
                  cache_off_tokens_per_s=result["medians"]["cache_off"],
                  speedup=result["ratios"]["cache_on/cache_off"]["median"])
    return result


def run_throughput_bench(args: argparse.Namespace) -> int:
    record = run_record()
    say_machine(record)
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
    result.update(model="synthetic-110m" if args.synthetic_110m else model, engine_flags=engine_flags(args),
                  record=record)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0
