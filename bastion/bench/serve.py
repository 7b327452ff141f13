"""`bastion bench serve`: load a running server through the OpenAI API and report throughput
and latency; with `--compare-offline`, start a server itself and run the same workload through
the offline engine in the same run (same requests, same concurrency), printing the ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bastion.args.engine import engine_kwargs
from bastion.bench.serve_load import LoadSettings, run_load, summarize
from bastion.bench.workloads import BenchRequest, mixed_workload, shared_prefix_workload
from bastion.launch.procs import terminate

PROMPT_VOCAB = 4096


def add_serve_bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="base URL of a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None,
                        help="bearer key (visible in the process list; prefer BASTION_API_KEY)")
    parser.add_argument("--ssl-ca-certs", default=None, help="CA that signs an https server's certificate")
    parser.add_argument("--ssl-client-certfile", default=None, help="client certificate for mutual TLS")
    parser.add_argument("--ssl-client-keyfile", default=None, help="its key (with --ssl-client-certfile)")
    parser.add_argument("--served-model", default=None, help="model name to request (default: the server's first)")
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
    parser.add_argument("--compare-ray", action="store_true",
                        help="start two servers on --model with --ranks ranks each: local processes, "
                             "then Ray actors (--data-parallel-backend ray); same workload against each")
    parser.add_argument("--ranks", type=int, default=2, help="data-parallel ranks for --compare-ray (default 2)")
    parser.add_argument("--ray-address", default=None,
                        help="the Ray cluster for --compare-ray (default $RAY_ADDRESS, else a local one)")
    parser.add_argument("--model", default=None,
                        help="model folder for --compare-offline/--compare-internal/--compare-ray (default: "
                             "the demo model)")
    parser.add_argument("--synthetic-110m", action="store_true",
                        help="with --compare-offline: a random ~110M Llama (with a word tokenizer)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")


def workload(args: argparse.Namespace, vocab: int) -> list[BenchRequest]:
    if args.workload == "mixed":
        reqs = mixed_workload(args.num_requests or 128, vocab, args.workload_seed)
    else:
        reqs = shared_prefix_workload(args.num_requests or 64, vocab, args.workload_seed)
    if args.max_tokens:
        reqs = [BenchRequest(r.prompt_token_ids, args.max_tokens) for r in reqs]
    return reqs


def _served_model(settings: LoadSettings) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    reply = httpx.get(f"{settings.url}/v1/models", headers=headers, timeout=30, verify=settings.verify())
    if reply.status_code != 200:
        raise ValueError(f"GET {settings.url}/v1/models answered {reply.status_code}: "
                         f"{reply.text[:200]} (--api-key or BASTION_API_KEY?)")
    return reply.json()["data"][0]["id"]


def measure_serving(url: str, args: argparse.Namespace, reqs: list[BenchRequest]) -> dict:
    api_key = args.api_key or os.environ.get("BASTION_API_KEY")
    client_cert = None
    if args.ssl_client_certfile or args.ssl_client_keyfile:
        if not (args.ssl_client_certfile and args.ssl_client_keyfile):
            raise ValueError("--ssl-client-certfile and --ssl-client-keyfile go together")
        client_cert = (args.ssl_client_certfile, args.ssl_client_keyfile)
    settings = LoadSettings(url.rstrip("/"), args.served_model or "", api_key, args.concurrency,
                            args.request_rate, ca_certs=args.ssl_ca_certs, client_cert=client_cert)
    if not settings.model:
        settings = dataclasses.replace(settings, model=_served_model(settings))
    warm = mixed_workload(4, PROMPT_VOCAB, seed=99, prompt_range=(16, 64), output_range=(4, 8))
    asyncio.run(run_load(settings, warm))
    cpu_before = _cpu_seconds()
    results, seconds = asyncio.run(run_load(settings, reqs))
    summary = summarize(results, seconds)
    summary["client_cpu_seconds"] = round(_cpu_seconds() - cpu_before, 2)
    print(f"serving: {summary['requests_per_s']:.2f} req/s, {summary['output_tokens_per_s']:.1f} output tok/s, "
          f"{summary['errors']} errors, {len(reqs)} requests at concurrency {args.concurrency} "
          f"(the load generator used {summary['client_cpu_seconds']} CPU-s in {summary['seconds']} s)")
    for name in ("ttft_ms", "itl_ms", "e2e_ms"):
        p = summary[name]
        print(f"  {name[:-3]:5s} p50 {p['p50']:9.1f} ms  p90 {p['p90']:9.1f} ms  p99 {p['p99']:9.1f} ms")
    return summary


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_serve_bench(args: argparse.Namespace) -> int:
    if [bool(args.url), args.compare_offline, args.compare_internal, args.compare_ray].count(True) != 1:
        raise ValueError("give one of --url URL (a running server), --compare-offline, --compare-internal "
                         "or --compare-ray")
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.compare_offline:
        with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp:
            result = compare_offline(args, Path(tmp))
    elif args.compare_internal:
        from bastion.bench.internal import compare_internal
        result = compare_internal(args)
    elif args.compare_ray:
        from bastion.bench.ray_compare import compare_ray
        result = compare_ray(args)
    else:
        result = measure_serving(args.url, args, workload(args, PROMPT_VOCAB))
    result.update(workload=args.workload, concurrency=args.concurrency, request_rate=args.request_rate)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if result.get("errors", 0) == 0 else 1


def compare_offline(args: argparse.Namespace, tmp: Path) -> dict:
    model = args.model
    if args.synthetic_110m:
        from bastion.bench.workloads import write_synthetic_110m
        model = str(write_synthetic_110m(tmp / "synthetic-110m"))
    elif model is None:
        from bastion.model.demo import default_model_path
        model = str(default_model_path())
    from bastion.model.arch import read_arch_config
    reqs = workload(args, min(read_arch_config(model).vocab_size, 32000))
    with _Server(model, args) as url:
        result = measure_serving(url, args, reqs)
    offline = measure_offline(model, args, reqs)
    ratio = round(result["output_tokens_per_s"] / offline, 3) if offline else None
    print(f"offline: {offline:.1f} output tok/s at concurrency {args.concurrency}")
    print(f"serving / offline: {ratio}")
    result.update(offline_output_tokens_per_s=round(offline, 2), serving_over_offline=ratio,
                  model="synthetic-110m" if args.synthetic_110m else model)
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


class _Server:
    """`bastion serve MODEL --port 0` with the bench's engine flags, for --compare-offline."""

    def __init__(self, model: str, args: argparse.Namespace, extra: tuple[str, ...] = ()) -> None:
        self.cmd = [sys.executable, "-m", "bastion.cli", "serve", model, "--port", "0",
                    *engine_flags(args), *extra]

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, text=True)
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.extend(
            line.split(" on ", 1)[1].split()[0] for line in self.proc.stdout if " on http" in line))
        reader.daemon = True
        reader.start()
        deadline = time.monotonic() + 600
        while not found and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not found:
            self.__exit__()
            raise RuntimeError("the benchmark's server did not start (see its log above)")
        return found[0]

    def __exit__(self, *exc) -> None:
        terminate(self.proc, 60)


def engine_flags(args: argparse.Namespace) -> list[str]:
    """The engine flags given to the bench, as `bastion serve` arguments."""
    flags = []
    for name, value in engine_kwargs(args).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else flag.replace("--", "--no-", 1))
        elif value is not None:
            flags += [flag, str(value)]
    return flags
