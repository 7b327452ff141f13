"""`bastion bench structured` end to end, small: it starts its own server on the demo model (or
drives a running one with --url), compiles a slice of the corpus and runs both sides; the JSON has
every promised key, both sides produced tokens, and the constrained side's outputs are JSON."""
from __future__ import annotations

import json
import subprocess
import sys

SMALL = ["--num-requests", "4", "--rounds", "2", "--max-tokens", "12", "--concurrency", "4"]


def _bench(tmp_path, *flags: str) -> dict:
    out = tmp_path / "structured.json"
    result = subprocess.run([sys.executable, "-m", "bastion.cli", "bench", "structured", *flags, *SMALL,
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "constrained" in result.stdout and "target >= 0.9" in result.stdout
    return json.loads(out.read_text())


def _check_serving(serving: dict, field: str) -> None:
    assert serving["constraint_field"] == field and serving["errors"] == 0
    assert serving["concurrency"] == 4 and serving["max_tokens"] == 12 and serving["rounds"] == 2
    for side in ("free", "constrained"):
        s = serving[side]
        assert len(s["runs"]) == 2 and s["output_tokens"] > 0 and s["output_tokens_per_s"] > 0
        assert 0 < s["mean_output_tokens"] <= 12 and sum(s["finish_reasons"].values()) == 8
    assert serving["constrained_over_free"] > 0 and len(serving["constrained_over_free_per_round"]) == 2
    assert isinstance(serving["meets_target"], bool) and serving["target"] == 0.9
    # the schema was enforced: every serving schema is an object whose first property is an array
    for run in serving["constrained"]["runs"]:
        assert run["output_heads"] and all(h.startswith('{"') for h in run["output_heads"]), run["output_heads"]


def test_bench_structured_starts_a_server_compiles_a_corpus_slice_and_compares_both_sides(tmp_path):
    data = _bench(tmp_path, "--corpus-limit", "6", "--dtype", "float32")
    compiled = data["compile"]
    assert compiled["schemas"] == 6 and compiled["compiled"] + compiled["failed"] == 6
    assert compiled["compiled"] >= 1 and compiled["vocab_size"] > 0
    for name in ("compile_ms", "first_mask_ms"):
        assert set(compiled[name]) == {"p50", "p90", "p99", "max", "mean"}
        assert 0 <= compiled[name]["p50"] <= compiled[name]["max"]
    assert compiled["compile_ms"]["max"] > 0
    assert all(f["error"] for f in compiled["failures"])
    assert data["machine"]["logical_cores"] >= 1 and "cpu_flags" in data["machine"]
    _check_serving(data["serving"], "structured-outputs")


def test_bench_structured_drives_a_running_server_with_response_format(shared_server, tmp_path):
    data = _bench(tmp_path, "--url", shared_server.url, "--serving-only", "--constraint-field", "response-format")
    assert "compile" not in data and data["url"] == shared_server.url
    _check_serving(data["serving"], "response-format")
