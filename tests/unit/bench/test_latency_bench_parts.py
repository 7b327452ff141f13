"""`bastion bench latency`'s pure parts: tokens per streamed chunk, inter-token gaps when a chunk
brings several tokens, the summaries and their bandwidth arithmetic, percentiles, ratios, the
sides the flags ask for and the checks of its flags."""
from __future__ import annotations

import argparse

import pytest

from bastion.bench.latency.args import check_latency_args, compare_flag_list, length_list
from bastion.bench.gaps import decode_summary, decode_trace, prefill_summary, ratio, ttft
from bastion.bench.latency.report import ratios
from bastion.bench.latency.sides import Side, plan_sides
from bastion.bench.gaps import percentiles
from bastion.bench.load import chunk_tokens
from bastion.cli import build_parser, main


def _args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", "latency", *flags])


# --- tokens per chunk --------------------------------------------------------------------------

def test_a_running_usage_count_says_how_many_tokens_a_chunk_brought():
    event = {"choices": [{"text": "ab"}], "usage": {"completion_tokens": 5}}
    assert chunk_tokens(event, 2) == 3
    assert chunk_tokens({"choices": [{"text": ""}], "usage": {"completion_tokens": 5}}, 5) == 0


def test_llama_cpp_timings_count_tokens_too():
    assert chunk_tokens({"choices": [{"text": "é"}], "timings": {"predicted_n": 7}}, 5) == 2
    # its first chunk (headers only, before any token)
    assert chunk_tokens({"choices": [{"text": ""}], "timings": {"predicted_n": 0}}, 0) == 0


def test_without_a_running_count_logprobs_then_text_count():
    completions = {"choices": [{"text": "xyz", "logprobs": {"tokens": ["x", "y", "z"]}}]}
    chat = {"choices": [{"delta": {"content": "xy"}, "logprobs": {"content": [{}, {}]}}]}
    assert chunk_tokens(completions, 9) == 3 and chunk_tokens(chat, 0) == 2
    assert chunk_tokens({"choices": [{"text": "xyz"}]}, 4) == 1  # text alone: one token, all it can say
    assert chunk_tokens({"choices": [{"text": ""}]}, 4) == 0
    assert chunk_tokens({"choices": [{"text": "a"}], "usage": None}, 0) == 1  # OpenAI's usage: null


# --- gaps --------------------------------------------------------------------------------------

def test_a_merged_chunk_shares_its_gap_among_its_tokens():
    trace = decode_trace([(0.100, 1), (0.110, 1), (0.140, 3), (0.150, 1)])
    assert trace.gaps == pytest.approx([0.010, 0.010, 0.010, 0.010, 0.010])
    assert trace.tokens == 6 and trace.decode_tokens == 5 and trace.merged_chunks == 1
    assert trace.decode_seconds == pytest.approx(0.050) and trace.first_chunk_extra == 0
    assert ttft([(0.100, 1), (0.110, 1)]) == 0.100 and ttft([]) is None


def test_tokens_that_came_with_the_first_have_no_gap_and_unseen_tokens_are_counted():
    trace = decode_trace([(0.2, 3), (0.3, 1)], total=6)
    assert trace.gaps == pytest.approx([0.1]) and trace.first_chunk_extra == 2
    assert trace.decode_tokens == 1 and trace.unplaced == 2
    empty = decode_trace([], total=4)
    assert empty.gaps == [] and empty.unplaced == 4 and empty.decode_seconds == 0


def test_percentiles_are_nearest_rank_in_milliseconds():
    assert percentiles([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert percentiles([0.004, 0.001, 0.003]) == {"p50": 3.0, "p90": 4.0, "p99": 4.0}


def test_prefill_tokens_per_s_is_the_prompt_over_ttft_p50():
    summary = prefill_summary(512, [0.1, 0.2, 0.4])
    assert summary["ttft_ms"]["p50"] == 200.0 and summary["prefill_tokens_per_s"] == 2560.0
    assert summary["iterations"] == 3 and prefill_summary(8, [])["prefill_tokens_per_s"] is None


def test_decode_summary_turns_itl_into_weight_traffic_and_a_share_of_the_bandwidth():
    traces = [decode_trace([(0.05, 1)] + [(0.05 + 0.01 * i, 1) for i in range(1, 5)]) for _ in range(2)]
    summary = decode_summary(5, traces, weight_bytes=270_000_000, bandwidth_gb_s=45.0)
    assert summary["itl_ms"]["p50"] == 10.0 and summary["decode_tokens_per_s"] == 100.0
    assert summary["weight_gb_s"] == 27.0 and summary["bandwidth_fraction"] == 0.6
    assert summary["output_tokens"] == [5, 5] and summary["merged_chunks"] == 0
    unknown = decode_summary(5, traces, weight_bytes=None, bandwidth_gb_s=45.0)
    assert unknown["weight_gb_s"] is None and unknown["bandwidth_fraction"] is None


def test_ratios_are_each_side_over_the_first():
    assert ratio(30.0, 20.0) == 1.5 and ratio(None, 2.0) is None and ratio(1.0, 0.0) is None

    def side(name: str, tps: float, itl: float, ttfts: list[float], tpots: list[float]) -> Side:
        s = Side(name, "url", [], None, "unknown")
        s.results = {"prefill": {"8": {"prefill_tokens_per_s": tps, "per_request_ttft_s": ttfts}},
                     "decode": {"4": {"decode_tokens_per_s": tps, "itl_ms": {"p50": itl},
                                      "per_request_tpot_s": tpots}}}
        return s
    out = ratios([side("a", 100.0, 10.0, [0.1, 0.2, 0.1], [0.01, 0.01, None]),
                  side("b", 50.0, 20.0, [0.2, 0.2, 0.3], [0.02, 0.03, 0.02])])
    paired = out["b"]
    assert {k: paired[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "itl_p50")} == \
        {"prefill_tokens_per_s": {"8": 0.5}, "decode_tokens_per_s": {"4": 0.5}, "itl_p50": {"4": 2.0}}
    # per pair: iteration i's request on b over iteration i's on a (a pair missing a value is left out)
    assert paired["ttft_per_pair"]["8"]["per_pair"] == [2.0, 1.0, 3.0]
    assert paired["ttft_per_pair"]["8"]["median"] == 2.0 and paired["ttft_per_pair"]["8"]["pairs"] == 3
    assert paired["tpot_per_pair"]["4"]["per_pair"] == [2.0, 3.0]


# --- flags and sides ---------------------------------------------------------------------------

def test_length_lists_parse_and_bad_ones_name_the_flag(capsys):
    assert length_list("128,512,128") == [128, 512]
    for bad in ("12x", "0", "", "5,-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            length_list(bad)
    with pytest.raises(SystemExit) as exit_:
        _args("--input-len", "12x")
    assert exit_.value.code == 2 and "--input-len" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "8"], "--batch-size 8: only 1 is supported"),
    (["--num-iters", "0"], "--num-iters must be at least 1"),
    (["--num-iters-warmup", "-1"], "--num-iters-warmup must be at least 0"),
    (["--time-limit", "0"], "--time-limit must be positive"),
    (["m", "--url", "http://127.0.0.1:1"], "not both"),
    (["--url", "http://127.0.0.1:1", "--compare-flags=--enforce-eager"], "give MODEL, not --url"),
    (["--compare-flags", " "], "--compare-flags is empty"),
    (["--compare-flags", "--dtype 'float32"], "--compare-flags"),
    (["--url", "http://127.0.0.1:1/", "--compare-url", "http://127.0.0.1:1"], "the same server"),
])
def test_flags_it_cannot_honour_are_refused_by_name(flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_latency_args(_args(*flags))


def test_the_command_exits_2_with_the_message_and_no_traceback(capsys):
    assert main(["bench", "latency", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 2: only 1 is supported" in err and "Traceback" not in err


def test_compare_flags_split_as_a_shell_does():
    assert compare_flag_list(_args("--compare-flags", "--quantization int8 --dtype 'bfloat16'")) == \
        ["--quantization", "int8", "--dtype", "bfloat16"]
    assert _args("--compare-flags=--enforce-eager").compare_flags == "--enforce-eager"


def test_sides_know_what_a_decode_step_reads(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "tokenizer.json").write_bytes(b"{}" * 50)
    sides = plan_sides(_args(str(tmp_path), "--compare-flags=--enforce-eager",
                             "--compare-url", "http://127.0.0.1:9"), str(tmp_path))
    assert [(s.name, s.kind, s.extra) for s in sides] == [
        ("bastion", "bastion", []), ("bastion --enforce-eager", "bastion", ["--enforce-eager"]),
        ("compare-url", "url", [])]
    assert [s.weight_bytes for s in sides] == [1000, 1000, None]  # a running server's: not guessed
    given = plan_sides(_args(str(tmp_path), "--compare-url", "http://127.0.0.1:9", "--compare-weight-bytes",
                             "2KB"), str(tmp_path))
    assert [(s.weight_bytes, s.weight_source) for s in given] == [(1000, "weight files"), (2000, "given")]
    quantized = plan_sides(_args(str(tmp_path), "--compare-flags=-q int8"), str(tmp_path))
    assert quantized[1].weight_bytes is None and "quantized" in quantized[1].weight_source
    url = plan_sides(_args("--url", "http://127.0.0.1:9", "--weight-bytes", "269MB"), None)
    assert url[0].weight_bytes == 269_000_000 and url[0].kind == "url"
