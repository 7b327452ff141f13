"""`bastion bench latency` end to end, small: it starts two bastion servers on the demo model (the
engine flags, and the same plus --compare-flags), alternates tiny prefill and decode requests
between them and writes every number for both sides, the ratios and the machine's bandwidth; and
the same beside a server that is already running (--compare-url)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support.server_process import ServerProcess

INPUT_LENS, OUTPUT_LENS = ["8", "24"], ["24", "48"]  # NOTE: long enough for several chunks at fused-decode speed


def test_bench_latency_compares_two_bastion_configurations(tmp_path):
    out = tmp_path / "latency.json"
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "bench", "latency", "--input-len", ",".join(INPUT_LENS),
         "--output-len", ",".join(OUTPUT_LENS), "--num-iters", "2", "--num-iters-warmup", "1",
         "--dtype", "float32", "--compare-flags=--enforce-eager", "--output-json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "prefill" in result.stdout and "decode" in result.stdout and "of bw" in result.stdout
    data = json.loads(out.read_text())
    assert data["batch_size"] == 1 and data["num_iters"] == 2 and data["input_len"] == [8, 24]
    assert data["memory_bandwidth"]["gb_s"] > 0 and data["machine"]["cpu_flags"] is not None
    assert data["record"]["bench_command"][:3] == ["bastion", "bench", "latency"]
    assert data["record"]["versions"]["torch"] and data["record"]["memory_bandwidth"]["gb_s"] > 0
    assert "--dtype" in data["engine_flags"] and "--no-enforce-eager" in data["engine_flags"]
    names = [side["name"] for side in data["sides"]]
    assert names == ["bastion", "bastion --enforce-eager"]
    assert data["sides"][1]["extra_flags"] == ["--enforce-eager"]
    for side in data["sides"]:
        assert side["kind"] == "bastion" and side["url"].startswith("http://127.0.0.1:")
        assert "serve" in side["command"] and side["command"][-len(side["extra_flags"]) or len(side["command"]):] \
            == side["extra_flags"]
        assert side["weight_bytes"] > 0 and side["weight_source"].startswith("weight files")
        assert sorted(side["prefill"]) == sorted(INPUT_LENS) and sorted(side["decode"]) == sorted(OUTPUT_LENS)
        for n, prefill in side["prefill"].items():
            assert prefill["input_len"] == int(n) and prefill["iterations"] == 2
            assert 0 < prefill["ttft_ms"]["p50"] <= prefill["ttft_ms"]["p90"] <= prefill["ttft_ms"]["p99"]
            assert prefill["prefill_tokens_per_s"] > 0
        for o, decode in side["decode"].items():
            assert decode["output_tokens"] == [int(o)] * 2 and decode["unplaced_tokens"] == 0
            # NOTE: >= 0: when the engine outruns the stream every token of a request can come in
            # merged chunks, which leave no gap to measure (the demo model's fused step can)
            assert 0 <= decode["itl_ms"]["p50"] <= decode["itl_ms"]["p99"]
            assert decode["decode_tokens_per_s"] > 0 and decode["weight_gb_s"] > 0
            assert 0 < decode["bandwidth_fraction"]
            assert decode["merged_chunks"] >= 0 and decode["first_chunk_extra_tokens"] >= 0
    ratios = data["ratios"]["bastion --enforce-eager"]
    assert sorted(ratios) == ["decode_tokens_per_s", "itl_p50", "prefill_tokens_per_s", "tpot_per_pair",
                              "ttft_per_pair"]
    assert sorted(ratios["ttft_per_pair"]) == sorted(INPUT_LENS)
    assert all(stats["pairs"] == 2 and stats["median"] > 0 for stats in ratios["ttft_per_pair"].values())
    # NOTE: a request whose tokens all came in its first chunk has no time per output token (the
    # demo model's fused step can outrun a client on a busy machine); its pair is left out
    assert sorted(ratios["tpot_per_pair"]) == sorted(OUTPUT_LENS)
    measured = 0
    for o, stats in ratios["tpot_per_pair"].items():
        both = [a is not None and b is not None for a, b in zip(
            data["sides"][0]["decode"][o]["per_request_tpot_s"], data["sides"][1]["decode"][o]["per_request_tpot_s"])]
        assert stats["pairs"] == sum(both) and len(stats["per_pair"]) == sum(both)
        assert all(r > 0 for r in stats["per_pair"]) and (not any(both) or stats["median"] > 0)
        measured += sum(both)
    assert measured >= 1
    assert all(r > 0 for kind in ("decode_tokens_per_s", "prefill_tokens_per_s") for r in ratios[kind].values())
    assert all(r is None or r >= 0 for r in ratios["itl_p50"].values())  # None: no gap on the first side


def test_bench_latency_refuses_a_batch_size_above_one():
    result = subprocess.run([sys.executable, "-m", "bastion.cli", "bench", "latency", "--batch-size", "4"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--batch-size 4: only 1 is supported" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_latency_compares_with_a_running_server_by_url(tmp_path):
    peer = ServerProcess("--dtype", "float32", "--served-model-name", "peer")
    try:
        out = tmp_path / "latency.json"
        result = subprocess.run(
            [sys.executable, "-m", "bastion.cli", "bench", "latency", "--input-len", "8", "--output-len", "5",
             "--num-iters", "2", "--num-iters-warmup", "0", "--dtype", "float32", "--compare-url", peer.url,
             "--output-json", str(out)], capture_output=True, text=True, timeout=600)
    finally:
        peer.stop()
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    data = json.loads(out.read_text())
    started, running = data["sides"]
    assert (started["kind"], running["kind"], running["url"]) == ("bastion", "url", peer.url)
    assert started["weight_bytes"] > 0 and running["weight_bytes"] is None  # a running server's: not guessed
    assert running["decode"]["5"]["output_tokens"] == [5, 5] and running["decode"]["5"]["bandwidth_fraction"] is None
    assert running["prefill"]["8"]["prefill_tokens_per_s"] > 0 and running["decode"]["5"]["decode_tokens_per_s"] > 0
    assert data["ratios"]["compare-url"]["decode_tokens_per_s"]["5"] > 0
