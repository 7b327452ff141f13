"""The pure arithmetic of the benches that stream (`bench latency`, `bench serve`): what one
streamed request's chunk arrivals say about prefill and decode, and the summaries of many
requests.

A request's `arrivals` are (seconds since it was sent, new tokens) per chunk that brought tokens
(`serve_load.chunk_tokens`). The first arrival ends the prefill (TTFT). Each later chunk that
brings k tokens after a gap g stands for k inter-token gaps of g/k: a merged chunk is neither one
fast gap (k tokens hidden) nor k gaps of g (time counted twice). Tokens that came in the first
chunk beside the first token had no gap of their own: they count in `first_chunk_extra` and in
no gap, and decode tokens/s counts only the tokens after the first chunk.
"""
from __future__ import annotations

from dataclasses import dataclass, field

Arrivals = list[tuple[float, int]]


@dataclass
class DecodeTrace:
    """What one request's arrivals say about its decode."""

    gaps: list[float] = field(default_factory=list)  # seconds, one per token after the first chunk
    tokens: int = 0  # every token that arrived
    decode_tokens: int = 0  # tokens after the first chunk
    decode_seconds: float = 0.0  # from the first chunk to the last
    merged_chunks: int = 0  # chunks after the first that brought more than one token
    first_chunk_extra: int = 0  # tokens beside the first one in the first chunk
    unplaced: int = 0  # tokens the server's total counts that no chunk was seen to bring


def percentiles(values: list[float]) -> dict:
    """p50/p90/p99 in milliseconds (nearest rank); zeros when there is nothing to rank."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))], 2)
    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99)}


def ttft(arrivals: Arrivals) -> float | None:
    """Seconds to the first chunk that brought a token (None: none did)."""
    return arrivals[0][0] if arrivals else None


def decode_trace(arrivals: Arrivals, total: int | None = None) -> DecodeTrace:
    """Inter-token gaps of one request, a merged chunk's gap shared among its tokens. `total`:
    the request's token count as its usage says (tokens beyond the chunks' are `unplaced`: a
    server that merges chunks and gives no running count)."""
    trace = DecodeTrace(unplaced=max(0, (total or 0) - sum(count for _, count in arrivals)))
    if not arrivals:
        return trace
    (start, first), previous = arrivals[0], arrivals[0][0]
    trace.tokens, trace.first_chunk_extra = first, first - 1
    for when, count in arrivals[1:]:
        trace.gaps += [(when - previous) / count] * count
        trace.tokens += count
        trace.decode_tokens += count
        trace.merged_chunks += count > 1
        previous = when
    trace.decode_seconds = previous - start
    return trace


def prefill_summary(prompt_len: int, ttfts: list[float]) -> dict:
    """TTFT percentiles (ms) of requests with `prompt_len`-token prompts and max_tokens 1, and
    prefill tokens/s: prompt_len / TTFT p50 (the request's whole time to its one token)."""
    ms = percentiles(ttfts)
    return {"input_len": prompt_len, "iterations": len(ttfts), "ttft_ms": ms,
            "prefill_tokens_per_s": round(prompt_len / ms["p50"] * 1000, 1) if ms["p50"] else None}


def decode_summary(output_len: int, traces: list[DecodeTrace], weight_bytes: int | None,
                   bandwidth_gb_s: float | None) -> dict:
    """Inter-token percentiles (ms) over every gap of every request, decode tokens/s (tokens after
    the first chunk over their time), and the memory traffic that ITL p50 means: `weight_bytes`
    read per token -> GB/s, and that as a fraction of the measured `bandwidth_gb_s`."""
    gaps = [g for t in traces for g in t.gaps]
    seconds = sum(t.decode_seconds for t in traces)
    ms = percentiles(gaps)
    gb_s = round(weight_bytes / ms["p50"] / 1e6, 1) if weight_bytes and ms["p50"] else None
    return {"output_len": output_len, "iterations": len(traces), "itl_ms": ms,
            "decode_tokens_per_s": round(sum(t.decode_tokens for t in traces) / seconds, 1) if seconds else None,
            "output_tokens": [t.tokens for t in traces],
            "merged_chunks": sum(t.merged_chunks for t in traces),
            "first_chunk_extra_tokens": sum(t.first_chunk_extra for t in traces),
            "unplaced_tokens": sum(t.unplaced for t in traces),
            "weight_bytes": weight_bytes, "weight_gb_s": gb_s,
            "bandwidth_fraction": round(gb_s / bandwidth_gb_s, 3) if gb_s and bandwidth_gb_s else None}


def ratio(side: float | None, first: float | None) -> float | None:
    """side / first, rounded (None when either is missing or first is 0)."""
    return round(side / first, 3) if side and first else None
