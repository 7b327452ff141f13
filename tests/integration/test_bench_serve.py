"""`bastion bench serve` against a real server: it completes and writes the promised JSON keys."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


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


def test_bench_serve_compares_local_ranks_with_ray_actors(tmp_path):
    pytest.importorskip("ray", reason="--compare-ray needs the ray extra: pip install 'bastion[ray]'")
    out = tmp_path / "ray.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BASTION_HOST_IP")}
    token = tmp_path / "ray_auth_token"  # NOTE: else Ray writes a new local cluster's token to ~/.ray
    token.write_text("t" * 64)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    result = subprocess.run(  # NOTE: the Ray server starts a local cluster on 127.0.0.1
        [sys.executable, "-m", "bastion.cli", "bench", "serve", "--compare-ray", "--num-requests", "8",
         "--max-tokens", "4", "--concurrency", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["ranks"] == 2 and data["local"]["errors"] == 0 and data["ray"]["output_tokens"] == 32
    assert data["local_output_tokens_per_s"] > 0 and data["ray_output_tokens_per_s"] > 0
    assert "is ready on Ray node 127.0.0.2 at tcp://127.0.0.2:" in result.stderr  # loopback, never external
    assert data["ray_over_local"] == round(data["ray_output_tokens_per_s"] / data["local_output_tokens_per_s"], 3)


def test_bench_serve_compares_with_a_running_peer(shared_server, tmp_path):
    """--compare-url: bastion started by the bench beside a server already running (here another
    bastion stands in for llama-server), the same requests alternating, ratios of the medians."""
    out = tmp_path / "peer.json"
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "bench", "serve", "--compare-url", shared_server.url,
         "--num-requests", "6", "--max-tokens", "4", "--concurrency", "3", "--repeats", "2",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["errors"] == 0 and data["peer_url"] == shared_server.url
    for side in ("bastion", "peer"):
        assert len(data[f"{side}_runs"]) == 2
        assert all(run["output_tokens"] == 24 for run in data[f"{side}_runs"])
        assert data[side] in data[f"{side}_runs"]
    for name in ("output_tokens_per_s_ratio", "ttft_p50_ratio", "itl_p50_ratio"):
        assert data[name] > 0


def test_bench_serve_compares_disaggregated_with_colocated_ranks(tmp_path):
    out = tmp_path / "disaggregated.json"
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "bench", "serve", "--compare-disaggregated",
         "--num-requests", "6", "--max-tokens", "4", "--concurrency", "3", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    for name in ("colocated", "disaggregated"):
        assert data[name]["errors"] == 0 and data[name]["output_tokens"] == 24
    kv = data["kv_channel"]
    assert kv["transfers"] >= 6 and kv["bytes"] > 0 and kv["gb_per_s"] > 0 and kv["copy_gb_per_s"] > 0
    assert data["output_tokens_per_s_ratio"] > 0 and data["memory_bandwidth"]["read_gb_s"] > 0
    assert "--compare-disaggregated" not in result.stdout and "KV channel:" in result.stdout
