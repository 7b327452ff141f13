"""`bastion bench serve` against real servers: it completes and writes the promised JSON keys; the
comparing modes run their sides in ABBA pairs, each side's command line and the run's record in
the JSON, ratios as medians with intervals (no assertion on a ratio's value: it is a measurement)."""
from __future__ import annotations

import json
import subprocess
import sys



def test_bench_serve_reports_throughput_and_latency_percentiles(shared_server, tmp_path):
    out = tmp_path / "serve.json"
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "bench", "serve", "--url", shared_server.url,
         "--num-requests", "12", "--max-tokens", "4", "--concurrency", "6", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    _check_record(record["record"])
    data = record["by_concurrency"]["6"]
    assert data["errors"] == 0 and data["num_requests"] == 12 and data["output_tokens"] == 48
    assert data["requests_per_s"] > 0 and data["output_tokens_per_s"] > 0
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(data[name]) == {"p50", "p90", "p99"}
        assert 0 <= data[name]["p50"] <= data[name]["p90"] <= data[name]["p99"]
    assert data["ttft_ms"]["p50"] > 0 and data["e2e_ms"]["p50"] > 0
    # tokens counted per token (a running count on every chunk), not per chunk
    assert data["unplaced_tokens"] == 0


def _check_record(record: dict) -> None:
    """The run's record: enough to repeat it."""
    assert record["bench_command"][:3] == ["bastion", "bench", "serve"]
    assert record["versions"]["bastion"] and record["versions"]["torch"] and record["versions"]["python"]
    assert record["machine"]["logical_cores"] >= 1 and "cpu_flags" in record["machine"]
    assert record["memory_bandwidth"]["read_gb_s"] > 0 and record["memory_bandwidth"]["copy_gb_s"] > 0
    assert len(record["bastion"]["commit"] or "x" * 40) == 40


def _check_comparison(data: dict, names: list[str], pairs: int, tokens: int) -> None:
    """Every side ran once per pair with every token, each later side has ratios over each earlier one."""
    assert [side["name"] for side in data["sides"]] == names and data["pairs"] == pairs
    assert data["errors"] == 0
    for name in names:
        assert [run["output_tokens"] for run in data["runs"][name]] == [tokens] * pairs
    for j, later in enumerate(names):
        for earlier in names[:j]:
            stats = data["ratios"][f"{later}/{earlier}"]["output_tokens_per_s"]
            assert stats["pairs"] == pairs and stats["low"] <= stats["median"] <= stats["high"]


def test_bench_serve_needs_exactly_one_target():
    result = subprocess.run([sys.executable, "-m", "bastion.cli", "bench", "serve"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "give one of --url URL" in result.stderr


def test_bench_serve_compares_internal_transports(tmp_path):
    out = tmp_path / "internal.json"
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "bench", "serve", "--compare-internal",
         "--num-requests", "6", "--max-tokens", "4", "--concurrency", "3", "--pairs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())["by_concurrency"]["3"]
    _check_comparison(data, ["tcp_plain", "tcp_curve", "ipc"], 1, 24)
    commands = {side["name"]: side["command"] for side in data["sides"]}
    assert commands["tcp_plain"][-4:] == ["--internal-transport", "tcp", "--internal-encryption", "off"]
    assert "serve" in commands["ipc"] and commands["ipc"][-2:] == ["--internal-transport", "ipc"]


def test_bench_serve_compares_with_a_running_peer(shared_server, tmp_path):
    """--compare-url: bastion started by the bench beside a server already running (here another
    bastion stands in for llama-server), the same requests in ABBA pairs, once per concurrency,
    ratios bastion / peer as the median of the pairs' ratios."""
    out = tmp_path / "peer.json"
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "bench", "serve", "--compare-url", shared_server.url,
         "--num-requests", "6", "--max-tokens", "4", "--concurrency", "1,3", "--pairs", "2",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["concurrency"] == [1, 3] and sorted(record["by_concurrency"]) == ["1", "3"]
    _check_record(record["record"])
    for data in record["by_concurrency"].values():
        _check_comparison(data, ["peer", "bastion"], 2, 24)
        assert data["sides"][0]["url"] == shared_server.url and "serve" in data["sides"][1]["command"]
        for key in ("ttft_ms.p50", "tpot_ms.p50"):
            assert data["ratios"]["bastion/peer"][key]["median"] > 0



def test_bench_serve_compares_disaggregated_with_colocated_ranks(tmp_path):
    out = tmp_path / "disaggregated.json"
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "bench", "serve", "--compare-disaggregated",
         "--num-requests", "6", "--max-tokens", "4", "--concurrency", "3", "--pairs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    data = record["by_concurrency"]["3"]
    _check_comparison(data, ["colocated", "disaggregated"], 1, 24)
    kv = data["kv_channel"]
    assert kv["transfers"] >= 6 and kv["bytes"] > 0 and kv["gb_per_s"] > 0 and kv["copy_gb_per_s"] > 0
    assert record["record"]["memory_bandwidth"]["read_gb_s"] > 0
    assert "--compare-disaggregated" not in result.stdout and "KV channel:" in result.stdout
