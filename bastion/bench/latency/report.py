"""What `bench latency` prints and writes: each side's numbers by length, side by side, and the
ratios of every side to the first: of the summaries (tokens/s: above 1 is faster than the
first side), and per pair (`pairs.ratio_stats`: each iteration's TTFT and TPOT over the first
side's in the same iteration; the median and its 95% interval; below 1 is faster)."""
from __future__ import annotations

from bastion.bench.gaps import ratio
from bastion.bench.latency.sides import Side
from bastion.bench.pairs import describe_ratio, ratio_stats


def ratios(sides: list[Side]) -> dict:
    """Each later side over the first: prefill tokens/s, decode tokens/s, ITL p50, by length."""
    first = sides[0].results
    out = {}
    for side in sides[1:]:
        mine = side.results
        out[side.name] = {
            "prefill_tokens_per_s": {n: ratio(p["prefill_tokens_per_s"], first["prefill"][n]["prefill_tokens_per_s"])
                                     for n, p in mine["prefill"].items()},
            "decode_tokens_per_s": {o: ratio(d["decode_tokens_per_s"], first["decode"][o]["decode_tokens_per_s"])
                                    for o, d in mine["decode"].items()},
            "itl_p50": {o: ratio(d["itl_ms"]["p50"], first["decode"][o]["itl_ms"]["p50"])
                        for o, d in mine["decode"].items()},
            "ttft_per_pair": {n: ratio_stats(p["per_request_ttft_s"], first["prefill"][n]["per_request_ttft_s"])
                              for n, p in mine["prefill"].items()},
            "tpot_per_pair": {o: ratio_stats(d["per_request_tpot_s"], first["decode"][o]["per_request_tpot_s"])
                              for o, d in mine["decode"].items()}}
    return out


def print_report(result: dict, sides: list[Side]) -> None:
    bw, machine = result["memory_bandwidth"], result["machine"]
    print(f"\nbench latency: one request at a time, {result['num_iters']} timed after {result['num_iters_warmup']} "
          f"warm-up per length and side, the sides' requests alternating")
    print(f"machine: {machine['cpu']}, {machine['usable_cores']} usable cores, flags {' '.join(machine['cpu_flags'])}; "
          f"memory bandwidth {bw['gb_s']} GB/s measured now (copy {bw['copy_gb_s']}, read {bw['read_gb_s']})")
    width = max(len(s.name) for s in sides)
    first = sides[0].results
    print(f"\n{'prefill':<{width}} {'input':>6} {'TTFT p50':>10} {'p99':>9} {'tok/s':>9} {'ratio':>6}")
    for n in first["prefill"]:
        for side in sides:
            p = side.results["prefill"][n]
            r = ratio(p["prefill_tokens_per_s"], first["prefill"][n]["prefill_tokens_per_s"])
            print(f"{side.name:<{width}} {n:>6} {p['ttft_ms']['p50']:>7.1f} ms {p['ttft_ms']['p99']:>6.1f} ms "
                  f"{_num(p['prefill_tokens_per_s']):>9} {_num(r, 3):>6}")
    print(f"\n{'decode':<{width}} {'output':>6} {'ITL p50':>10} {'p99':>9} {'tok/s':>9} {'ratio':>6} "
          f"{'GB/s':>6} {'of bw':>6} {'merged':>6}")
    for o in first["decode"]:
        for side in sides:
            d = side.results["decode"][o]
            r = ratio(d["decode_tokens_per_s"], first["decode"][o]["decode_tokens_per_s"])
            share = f"{d['bandwidth_fraction']:.0%}" if d["bandwidth_fraction"] else "-"
            print(f"{side.name:<{width}} {o:>6} {d['itl_ms']['p50']:>7.2f} ms {d['itl_ms']['p99']:>6.2f} ms "
                  f"{_num(d['decode_tokens_per_s']):>9} {_num(r, 3):>6} {_num(d['weight_gb_s']):>6} {share:>6} "
                  f"{d['merged_chunks']:>6}")
    for name, paired in result["ratios"].items():
        for n, stats in paired["ttft_per_pair"].items():
            print(f"{name} / {sides[0].name}, TTFT at input {n}, per pair: {describe_ratio(stats)}")
        for o, stats in paired["tpot_per_pair"].items():
            print(f"{name} / {sides[0].name}, time per output token at output {o}, per pair: {describe_ratio(stats)}")
    print("\nratio: tokens/s over the first side's. GB/s: weight bytes per token / ITL p50 "
          "(weights: " + "; ".join(f"{s.name} {_size(s.weight_bytes)} ({s.weight_source})" for s in sides) + "). "
          "merged: chunks that brought several tokens (their gap is shared among them).")


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _size(nbytes: int | None) -> str:
    return "?" if nbytes is None else f"{nbytes / 1e6:.1f} MB"
