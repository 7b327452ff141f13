"""The measuring loops of `bench latency`: for each length, warm-up and timed requests, one at
a time, each iteration one request to every side in ABBA order (`pairs.abba_order`: reversed
every other iteration, so drift on a shared machine falls on every side alike); an iteration's
requests are a pair whose ratios `report.py` takes. Every loop is bounded: by --num-iters, by --time-limit for
the whole, and by --request-timeout for a server that sends nothing; a failed request stops
the run with a `SideFailed` naming the side."""
from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from bastion.bench.gaps import decode_summary, decode_trace, prefill_summary, ttft
from bastion.bench.latency.sides import Side
from bastion.bench.pairs import abba_order
from bastion.bench.load import RequestResult, completion_body, run_load
from bastion.bench.workloads import BenchRequest

FIRST_PROMPT_ID = 10  # prompt ids stay above the usual special tokens


class SideFailed(RuntimeError):
    """A side's server errored, stalled, or did not give what was asked."""


def measure(sides: list[Side], args: argparse.Namespace, vocab: int, bandwidth_gb_s: float | None) -> None:
    """Fill each side's `results` with its prefill and decode summaries, by length."""
    rng = np.random.default_rng(0)
    deadline = time.monotonic() + args.time_limit
    for side in sides:
        side.results = {"prefill": {}, "decode": {}}
    for n in args.input_len:
        timed = _rounds(sides, args, deadline, lambda: BenchRequest(_prompt(rng, n, vocab), 1))
        for side in sides:
            ttfts = [ttft(r.arrivals) for r in timed[side.name]]
            side.results["prefill"][str(n)] = {**prefill_summary(n, ttfts), "per_request_ttft_s": ttfts}
    for o in args.output_len:
        timed = _rounds(sides, args, deadline, lambda: BenchRequest(_prompt(rng, args.decode_input_len, vocab), o))
        for side in sides:
            traces = [decode_trace(r.arrivals, r.output_tokens) for r in timed[side.name]]
            tpots = [t.decode_seconds / t.decode_tokens if t.decode_tokens else None for t in traces]
            side.results["decode"][str(o)] = {**decode_summary(o, traces, side.weight_bytes, bandwidth_gb_s),
                                              "per_request_tpot_s": tpots}


def _rounds(sides: list[Side], args: argparse.Namespace, deadline: float, make) -> dict[str, list[RequestResult]]:
    """Warm-up then timed iterations; each iteration sends one new request to every side in turn."""
    timed: dict[str, list[RequestResult]] = {side.name: [] for side in sides}
    for i in range(args.num_iters_warmup + args.num_iters):
        req = make()  # NOTE: a new random prompt each iteration: no prefix-cache hits
        for side in abba_order(sides, i):
            if time.monotonic() > deadline:
                raise SideFailed(f"--time-limit {args.time_limit:g} s passed before the last request; "
                                 f"give fewer --num-iters or shorter lengths")
            result = one_request(side, req, args.request_timeout)
            if i >= args.num_iters_warmup:
                timed[side.name].append(result)
    return timed


def one_request(side: Side, req: BenchRequest, request_timeout: float) -> RequestResult:
    """One streamed request to `side`; SideFailed unless it gave exactly the tokens asked."""
    (result,), _ = asyncio.run(run_load(side.settings, [req], completion_body))
    where = f"{side.name} ({side.url})"
    if result.error:
        stalled = f" (nothing came for --request-timeout {request_timeout:g} s)" if "Timeout" in result.error else ""
        raise SideFailed(f"{where}: a request failed: {result.error}{stalled}")
    if result.output_tokens != req.output_len or not result.arrivals:
        raise SideFailed(f"{where}: asked for exactly {req.output_len} tokens (ignore_eos), got "
                         f"{result.output_tokens} in {len(result.arrivals)} chunks that brought tokens "
                         f"(finish_reason {result.finish_reason!r}); a server must honour ignore_eos "
                         f"and stream usage")
    return result


def _prompt(rng: np.random.Generator, length: int, vocab: int) -> list[int]:
    return rng.integers(FIRST_PROMPT_ID, vocab, length).tolist()
