"""An async load generator for an OpenAI-compatible server: streamed completions of token-id
prompts (or any streamed body a `BodyOf` makes, completions or chat), closed-loop (fixed
concurrency) or open-loop (Poisson arrivals), with latency stats.

Latency is counted per token, not per streamed chunk: every body asks for a running token count
on each chunk (vLLM's `continuous_usage_stats`, which bastion honours, and llama.cpp's
`timings_per_token`), a chunk that brings k tokens after a gap g counts as k gaps of g/k
(`gaps.decode_trace`), and each request's time per output token (TPOT) is the time from its
first token to its last over the tokens after the first, as `bench latency` counts them.

It uses raw httpx and parses only what it measures, so the client costs the server's CPU as
little as possible on a small machine. `measure_serving` runs the bench's flags against a URL:
a warm-up, then the workload, and prints the summary.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import httpx

from bastion.bench.gaps import decode_trace, percentiles
from bastion.bench.workloads import PROMPT_VOCAB, BenchRequest, mixed_workload


@dataclass
class RequestResult:
    ok: bool
    output_tokens: int = 0
    ttft: float | None = None
    e2e: float = 0.0
    error: str = ""
    finish_reason: str = ""
    head: str = ""  # the output's first characters (what a constraint shapes first)
    # (seconds since the request was sent, new tokens) of each streamed chunk that brought tokens
    arrivals: list[tuple[float, int]] = field(default_factory=list)


HEAD_CHARS = 32


@dataclass(frozen=True)
class LoadSettings:
    url: str
    model: str
    api_key: str | None = None
    concurrency: int = 64
    request_rate: float | None = None
    timeout: float = 600.0
    seed: int = 0
    ca_certs: str | None = None  # verify an https server against this CA (else the system's)
    client_cert: tuple[str, str] | None = None  # (certificate, key) for mutual TLS

    def verify(self):
        """httpx's `verify`: a context trusting `ca_certs` (and presenting `client_cert`)."""
        import ssl

        context = ssl.create_default_context(cafile=self.ca_certs)
        if self.client_cert:
            context.load_cert_chain(*self.client_cert)
        return context


# A request's route and streamed body, from the load's settings and one request of the workload.
BodyOf = Callable[[LoadSettings, Any], tuple[str, dict]]


def streamed_with_counts(body: dict) -> dict:
    """`body`, streamed, asking for the usage at the end and a running token count on every
    chunk: vLLM's `continuous_usage_stats` (bastion honours it) and llama.cpp's
    `timings_per_token` (each server ignores the other's)."""
    return {**body, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "timings_per_token": True}


def completion_body(s: LoadSettings, req: BenchRequest) -> tuple[str, dict]:
    """A streamed `/v1/completions` of a token-id prompt, greedy, exactly `output_len` tokens,
    with a running token count on every chunk."""
    return "/v1/completions", streamed_with_counts(
        {"model": s.model, "prompt": req.prompt_token_ids, "max_tokens": req.output_len,
         "temperature": 0, "ignore_eos": True})


def _text_of(choice: dict) -> str:
    """A streamed choice's new text: completions' `text` or chat's `delta.content`."""
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def chunk_tokens(event: dict, counted: int) -> int:
    """How many new tokens one streamed event brings, `counted` having come before it: from a
    running count where the server gives one (vLLM's `continuous_usage_stats`, llama.cpp's
    `timings_per_token`), else the choices' logprobs entries, else one per choice with text.
    Servers may merge several tokens into one chunk (text held back for an incomplete UTF-8
    character, a slow reader), so a chunk is not always one token."""
    running = [(event.get("usage") or {}).get("completion_tokens"), (event.get("timings") or {}).get("predicted_n")]
    for total in running:
        if isinstance(total, int):
            return max(0, total - counted)
    tokens = 0
    for choice in event.get("choices", ()):
        logprobs = choice.get("logprobs") or {}
        listed = logprobs.get("tokens") if "tokens" in logprobs else logprobs.get("content")
        tokens += len(listed) if listed else int(bool(_text_of(choice)))
    return tokens


async def _one(http: httpx.AsyncClient, s: LoadSettings, req: Any, body_of: BodyOf) -> RequestResult:
    path, body = body_of(s, req)
    started = time.perf_counter()
    result = RequestResult(ok=False)
    counted = 0
    try:
        async with http.stream("POST", f"{s.url}{path}", json=body) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    result.error = event["error"].get("message", "error event")
                    return result
                now = time.perf_counter()
                if event.get("choices") and (new := chunk_tokens(event, counted)):
                    result.arrivals.append((now - started, new))
                    counted += new
                texts = [_text_of(c) for c in event.get("choices", ())]
                for choice in event.get("choices", ()):
                    result.finish_reason = choice.get("finish_reason") or result.finish_reason
                if any(texts) and len(result.head) < HEAD_CHARS:
                    result.head = (result.head + "".join(texts))[:HEAD_CHARS]
                if event.get("usage"):
                    result.output_tokens = event["usage"]["completion_tokens"]
    except (httpx.HTTPError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.e2e = time.perf_counter() - started
    result.ttft = result.arrivals[0][0] if result.arrivals else None
    result.ok = result.output_tokens > 0
    return result


async def run_load(s: LoadSettings, reqs: list, body_of: BodyOf = completion_body
                   ) -> tuple[list[RequestResult], float]:
    """Send every request (each made into a body by `body_of`); return the results and the wall
    time of the whole run."""
    headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else {}
    limits = httpx.Limits(max_connections=s.concurrency + 8, max_keepalive_connections=s.concurrency + 8)
    async with httpx.AsyncClient(timeout=s.timeout, limits=limits, headers=headers, verify=s.verify()) as http:
        gate = asyncio.Semaphore(s.concurrency)
        rng = random.Random(s.seed)

        async def gated(req: BenchRequest) -> RequestResult:
            async with gate:
                result = await _one(http, s, req, body_of)
                if _stale_connection(result):  # NOTE: sent once more, as HTTP clients do
                    result = await _one(http, s, req, body_of)
                return result
        started = time.perf_counter()
        tasks = []
        for req in reqs:
            tasks.append(asyncio.create_task(gated(req)))
            if s.request_rate:
                await asyncio.sleep(rng.expovariate(s.request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - started


def _stale_connection(result: RequestResult) -> bool:
    """The server closed a kept-alive connection just as the request went out on it (llama.cpp's
    server drops idle ones after 5 s): nothing was answered, so the request can go again."""
    return not result.ok and not result.arrivals and result.error.startswith("RemoteProtocolError")


def summarize(results: list[RequestResult], seconds: float) -> dict:
    """The run's rates and latencies: TTFT per request, inter-token gaps per token (a merged
    chunk's gap shared among its tokens), TPOT per request (first token to last, over the tokens
    after the first chunk; requests of one token have none), end-to-end per request."""
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    traces = [decode_trace(r.arrivals, r.output_tokens) for r in ok]
    return {"num_requests": len(results), "errors": len(results) - len(ok),
            "seconds": round(seconds, 2),
            "requests_per_s": round(len(ok) / seconds, 3) if seconds else 0.0,
            "output_tokens_per_s": round(tokens / seconds, 2) if seconds else 0.0,
            "output_tokens": tokens,
            "ttft_ms": percentiles([r.ttft for r in ok if r.ttft is not None]),
            "tpot_ms": percentiles([t.decode_seconds / t.decode_tokens for t in traces if t.decode_tokens]),
            "itl_ms": percentiles([g for t in traces for g in t.gaps]),
            "e2e_ms": percentiles([r.e2e for r in ok]),
            "merged_chunks": sum(t.merged_chunks for t in traces),
            "unplaced_tokens": sum(t.unplaced for t in traces),
            "mean_output_tokens": round(tokens / len(ok), 1) if ok else 0.0,
            "finish_reasons": dict(Counter(r.finish_reason or "none" for r in ok)),
            "output_heads": [r.head for r in ok[:3]],
            "first_errors": sorted({r.error for r in results if not r.ok})[:3]}


def add_client_args(parser: argparse.ArgumentParser) -> None:
    """The flags `measure_serving` reads to reach a running server: --url, credentials, TLS, model."""
    parser.add_argument("--url", default=None, help="base URL of a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None,
                        help="bearer key (visible in the process list; prefer BASTION_API_KEY)")
    parser.add_argument("--ssl-ca-certs", default=None, help="CA that signs an https server's certificate")
    parser.add_argument("--ssl-client-certfile", default=None, help="client certificate for mutual TLS")
    parser.add_argument("--ssl-client-keyfile", default=None, help="its key (with --ssl-client-certfile)")
    parser.add_argument("--served-model", default=None, help="model name to request (default: the server's first)")


def _served_model(settings: LoadSettings) -> str:
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    reply = httpx.get(f"{settings.url}/v1/models", headers=headers, timeout=30, verify=settings.verify())
    if reply.status_code != 200:
        raise ValueError(f"GET {settings.url}/v1/models answered {reply.status_code}: "
                         f"{reply.text[:200]} (--api-key or BASTION_API_KEY?)")
    return reply.json()["data"][0]["id"]


def client_settings(url: str, args: argparse.Namespace, **load) -> LoadSettings:
    """Settings to reach `url` from the client flags (`add_client_args`): its key, TLS, and the
    model to request (--served-model, else the server's first); `load` sets the rest of
    LoadSettings (concurrency, request_rate, timeout)."""
    client_cert = None
    if args.ssl_client_certfile or args.ssl_client_keyfile:
        if not (args.ssl_client_certfile and args.ssl_client_keyfile):
            raise ValueError("--ssl-client-certfile and --ssl-client-keyfile go together")
        client_cert = (args.ssl_client_certfile, args.ssl_client_keyfile)
    settings = LoadSettings(url.rstrip("/"), args.served_model or "",
                            args.api_key or os.environ.get("BASTION_API_KEY"),
                            ca_certs=args.ssl_ca_certs, client_cert=client_cert, **load)
    return settings if settings.model else replace(settings, model=_served_model(settings))


def measure_serving(url: str, args: argparse.Namespace, reqs: list, warmup: list | None = None,
                    body_of: BodyOf = completion_body) -> dict:
    """Run `reqs` against `url` after an untimed warm-up (`warmup`, default 4 short requests;
    `[]` for none) and print the summary. `body_of` makes each request's body (default: a
    token-id completion)."""
    settings = client_settings(url, args, concurrency=args.concurrency, request_rate=args.request_rate)
    if warmup is None:
        asyncio.run(run_load(settings, mixed_workload(4, PROMPT_VOCAB, seed=99, prompt_range=(16, 64),
                                                      output_range=(4, 8))))
    elif warmup:
        asyncio.run(run_load(settings, warmup, body_of))
    cpu_before = _cpu_seconds()
    results, seconds = asyncio.run(run_load(settings, reqs, body_of))
    summary = summarize(results, seconds)
    summary["client_cpu_seconds"] = round(_cpu_seconds() - cpu_before, 2)
    print(f"serving: {summary['requests_per_s']:.2f} req/s, {summary['output_tokens_per_s']:.1f} output tok/s, "
          f"{summary['errors']} errors, {len(reqs)} requests at concurrency {args.concurrency} "
          f"(the load generator used {summary['client_cpu_seconds']} CPU-s in {summary['seconds']} s)")
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        p = summary[name]
        print(f"  {name[:-3]:5s} p50 {p['p50']:9.1f} ms  p90 {p['p90']:9.1f} ms  p99 {p['p99']:9.1f} ms")
    return summary


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
