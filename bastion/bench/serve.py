"""`bastion bench serve`: load a running server through the OpenAI API and report throughput
and latency; with `--compare-offline`, start a server itself and run the same workload through
the offline engine in the same run (same requests, same concurrency), printing the ratio.
The other `--compare-*` modes start servers the same way and compare two or three deployments
(`deployments/`, `security/compare.py`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bastion.bench.deployments.disaggregated import compare_disaggregated
from bastion.bench.deployments.internal import compare_internal
from bastion.bench.deployments.ray_compare import compare_ray
from bastion.bench.harness import bench_server
from bastion.bench.peer.serve_compare import compare_url
from bastion.bench.security.compare import compare_security
from bastion.bench.serve_load import add_client_args, measure_serving
from bastion.bench.workloads import PROMPT_VOCAB, BenchRequest, bench_inputs, workload


def add_serve_bench_args(parser: argparse.ArgumentParser) -> None:
    add_client_args(parser)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight at once")
    parser.add_argument("--request-rate", type=float, default=None,
                        help="Poisson arrivals per second instead of a closed loop (still capped by --concurrency)")
    parser.add_argument("--workload", choices=["mixed", "shared-prefix"], default="mixed",
                        help="mixed: prompts 32-512 and outputs 16-256 tokens; shared-prefix: a 384-token "
                             "prefix, 32 own tokens, 64 new tokens")
    parser.add_argument("--num-requests", type=int, default=None, help="default 128 (mixed) / 64 (shared-prefix)")
    parser.add_argument("--max-tokens", type=int, default=None, help="every request generates exactly this many tokens")
    parser.add_argument("--workload-seed", type=int, default=0)
    parser.add_argument("--compare-offline", action="store_true",
                        help="start a server on --model, then run the same workload offline")
    parser.add_argument("--compare-internal", action="store_true",
                        help="start three servers on --model: internal ipc, TCP with CurveZMQ, plain TCP; "
                             "same workload against each")
    parser.add_argument("--compare-disaggregated", action="store_true",
                        help="start a colocated (-dp --ranks) and a disaggregated (--prefill-ranks 1) "
                             "server in turn; TTFT, inter-token latency, tok/s, and the KV channel's GB/s "
                             "against an in-process copy (docs/disaggregation.md)")
    parser.add_argument("--compare-ray", action="store_true",
                        help="start two servers on --model with --ranks ranks each: local processes, "
                             "then Ray actors (--data-parallel-backend ray); same workload against each")
    parser.add_argument("--compare-security", action="store_true",
                        help="start two servers on --model (or --synthetic-110m): everything off (HTTP, no "
                             "auth, no limits, no audit, internal ipc) and everything on (TLS with a "
                             "certificate made for the run, an API key from a keys file, per-key limits "
                             "that never bind, an audit log, internal TCP with CurveZMQ); the same "
                             "workload against each, interleaved --repeats times")
    parser.add_argument("--compare-url", default=None, metavar="URL",
                        help="start bastion on --model (with the engine flags) and run the same workload "
                             "against it and against the server already running at URL (e.g. llama.cpp's "
                             "llama-server on the same checkpoint), alternating --repeats times; prints "
                             "the ratios bastion / peer")
    parser.add_argument("--repeats", type=int, default=3,
                        help="with --compare-security or --compare-url: runs per side, interleaved (default 3)")
    parser.add_argument("--ranks", type=int, default=2, help="data-parallel ranks for --compare-ray and --compare-disaggregated (default 2)")
    parser.add_argument("--ray-address", default=None,
                        help="the Ray cluster for --compare-ray (default $RAY_ADDRESS, else a local one)")
    parser.add_argument("--model", default=None,
                        help="model folder (or GGUF file) for --compare-offline/--compare-internal/"
                             "--compare-ray/--compare-security/--compare-url (default: the demo model)")
    parser.add_argument("--synthetic-110m", action="store_true",
                        help="with --compare-offline, --compare-security or --compare-disaggregated: a random ~110M Llama (with a "
                             "word tokenizer)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")


def run_serve_bench(args: argparse.Namespace) -> int:
    modes = [bool(args.url), args.compare_offline, args.compare_internal, args.compare_ray,
             args.compare_security, bool(args.compare_url), args.compare_disaggregated]
    if modes.count(True) != 1:
        raise ValueError("give one of --url URL (a running server), --compare-offline, --compare-internal, "
                         "--compare-ray, --compare-security, --compare-disaggregated or --compare-url URL")
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.compare_offline:
        result = compare_offline(args)
    elif args.compare_internal:
        result = compare_internal(args)
    elif args.compare_ray:
        result = compare_ray(args)
    elif args.compare_disaggregated:
        result = compare_disaggregated(args)
    elif args.compare_security:
        result = compare_security(args)
    elif args.compare_url:
        result = compare_url(args)
    else:
        result = measure_serving(args.url, args, workload(args, PROMPT_VOCAB))
    result.update(workload=args.workload, concurrency=args.concurrency, request_rate=args.request_rate)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if result.get("errors", 0) == 0 else 1


def compare_offline(args: argparse.Namespace) -> dict:
    with bench_inputs(args) as (model, label, reqs):
        with bench_server(model, args) as url:
            result = measure_serving(url, args, reqs)
        offline = measure_offline(model, args, reqs)
    ratio = round(result["output_tokens_per_s"] / offline, 3) if offline else None
    print(f"offline: {offline:.1f} output tok/s at concurrency {args.concurrency}")
    print(f"serving / offline: {ratio}")
    result.update(offline_output_tokens_per_s=round(offline, 2), serving_over_offline=ratio,
                  model=label)
    return result


def measure_offline(model: str, args: argparse.Namespace, reqs: list[BenchRequest]) -> float:
    """The same requests through an in-process engine, at most --concurrency at a time."""
    from bastion.bench.throughput import warm_engine
    from bastion.sampling_params import SamplingParams

    engine = warm_engine(model, args)
    queue = list(enumerate(reqs))[::-1]

    def add_next() -> None:
        i, r = queue.pop()
        engine.add_request(str(i), r.prompt_token_ids,
                           SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True))
    started = time.perf_counter()
    for _ in range(min(args.concurrency, len(queue))):
        add_next()
    produced = 0
    while engine.has_unfinished:
        for out in engine.step():
            produced += len(out.new_token_ids)
            if out.finished and queue:
                add_next()
    return produced / (time.perf_counter() - started)
