"""`bastion bench serve`: load a running server through the OpenAI API and report throughput
and latency; or start deployments itself and compare them (`--compare-*`, `--peer-llama-server`)
in ABBA pairs (`compare.py`), once per `--concurrency`. The JSON holds the run's record
(`provenance.py`: command, commit, versions, machine, memory bandwidth) and, per concurrency,
each side's command line, runs, medians, and the ratios with their 95% intervals.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from bastion.bench.load import measure_serving
from bastion.bench.provenance import run_record, say_machine
from bastion.bench.serve.args import add_serve_bench_args, chosen_mode
from bastion.bench.serve.compare import at_concurrency
from bastion.bench.workloads import PROMPT_VOCAB, workload

__all__ = ["add_serve_bench_args", "run_serve_bench"]


def run_serve_bench(args: argparse.Namespace) -> int:
    mode = chosen_mode(args)
    if args.num_requests is not None and args.num_requests < 1:
        raise ValueError(f"--num-requests must be at least 1, got {args.num_requests}")
    record = run_record()  # NOTE: the bandwidth is measured before any server starts
    say_machine(record)
    if mode is None:
        by_concurrency = {str(c): measure_serving(args.url, at_concurrency(args, c), workload(args, PROMPT_VOCAB))
                          for c in args.concurrency}
    else:
        by_concurrency = _mode_runner(mode)(args)
    result = {"record": record, "mode": mode or "url", "workload": args.workload,
              "num_requests": args.num_requests, "max_tokens": args.max_tokens,
              "request_rate": args.request_rate, "concurrency": args.concurrency,
              "by_concurrency": by_concurrency,
              "errors": sum(r.get("errors", 0) for r in by_concurrency.values())}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if result["errors"] == 0 else 1


def _mode_runner(mode: str) -> Callable[[argparse.Namespace], dict]:
    from bastion.bench.serve.deployments.disaggregated import compare_disaggregated
    from bastion.bench.serve.deployments.internal import compare_internal
    from bastion.bench.serve.deployments.ray_compare import compare_ray
    from bastion.bench.serve.offline import compare_offline
    from bastion.bench.serve.peer import compare_llama_server, compare_url
    from bastion.bench.serve.security.compare import compare_security

    return {"compare_offline": compare_offline, "compare_internal": compare_internal,
            "compare_ray": compare_ray, "compare_security": compare_security, "compare_url": compare_url,
            "compare_disaggregated": compare_disaggregated, "peer_llama_server": compare_llama_server}[mode]
