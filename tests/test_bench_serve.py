"""`bastion bench serve` against a real server: it completes and writes the promised JSON keys."""
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
    data = json.loads(out.read_text())
    assert data["errors"] == 0 and data["num_requests"] == 12 and data["output_tokens"] == 48
    assert data["requests_per_s"] > 0 and data["output_tokens_per_s"] > 0
    for name in ("ttft_ms", "itl_ms", "e2e_ms"):
        assert set(data[name]) == {"p50", "p90", "p99"}
        assert 0 < data[name]["p50"] <= data[name]["p90"] <= data[name]["p99"]


def test_bench_serve_needs_exactly_one_target():
    result = subprocess.run([sys.executable, "-m", "bastion.cli", "bench", "serve"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "give one of --url URL" in result.stderr


def test_bench_serve_compares_internal_transports(tmp_path):
    out = tmp_path / "internal.json"
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "bench", "serve", "--compare-internal",
         "--num-requests", "6", "--max-tokens", "4", "--concurrency", "3", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    for name in ("ipc", "tcp_curve", "tcp_plain"):
        assert data[name]["errors"] == 0 and data[name]["output_tokens"] == 24
    assert data["tcp_curve_over_ipc"] > 0 and data["tcp_curve_over_tcp_plain"] > 0
