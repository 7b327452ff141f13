"""`bastion bench serve --compare-offline`: the HTTP path against the engine alone.

A server on --model and an in-process engine with the same engine flags, both up for the whole
run; each pair sends the same requests at the same concurrency through each (offline, a new
request joins whenever one finishes). Ratios are serving / offline.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack

from bastion.bench.harness import bench_server, engine_flags
from bastion.bench.provenance import scrub, side_record
from bastion.bench.serve.compare import ServeSide, over_concurrencies
from bastion.bench.workloads import BenchRequest, bench_inputs


def compare_offline(args: argparse.Namespace) -> dict:
    from bastion.bench.throughput.run import warm_engine

    with bench_inputs(args) as (model, label, vocab), ExitStack() as stack:
        server = stack.enter_context(bench_server(model, args))
        engine = warm_engine(model, args)
        offline = ServeSide("offline", side_record("offline", scrub(["bastion", *sys.argv[1:]]),
                                                   kind="in-process engine", model=label,
                                                   engine_flags=engine_flags(args)),
                            run=lambda at, reqs: measure_offline(engine, at, reqs))
        serving = ServeSide("serving", side_record("serving", server.command, model=label), url=server.url)
        return over_concurrencies(args, vocab, [offline, serving])


def measure_offline(engine, args: argparse.Namespace, reqs: list[BenchRequest]) -> dict:
    """The requests through the in-process `engine`, at most --concurrency at a time; a run's
    summary with what an engine without a client can say (output tokens/s)."""
    from bastion.sampling_params import SamplingParams

    engine.blocks.reset_prefix_cache()
    queue = list(enumerate(reqs))[::-1]

    def add_next() -> None:
        i, r = queue.pop()
        engine.add_request(f"offline-{time.monotonic_ns()}-{i}", r.prompt_token_ids,
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
    seconds = time.perf_counter() - started
    print(f"offline: {produced / seconds:.1f} output tok/s ({produced} tokens in {seconds:.1f} s) "
          f"at concurrency {args.concurrency}")
    return {"num_requests": len(reqs), "errors": 0, "seconds": round(seconds, 2), "output_tokens": produced,
            "output_tokens_per_s": round(produced / seconds, 2) if seconds else 0.0}
