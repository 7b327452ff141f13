"""`bastion bench serve --compare-security` end to end at a tiny scale: both servers start, the
secure one really has TLS, a key, limits, an audit log and CurveZMQ, and the JSON has the promised
keys with positive values (no assertion on the ratio: it is a measurement)."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def test_compare_security_runs_both_sides_and_writes_the_promised_keys(tmp_path):
    out = tmp_path / "security.json"
    env = {k: v for k, v in os.environ.items() if k != "BASTION_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "bastion.cli", "bench", "serve", "--compare-security", "--num-requests", "4",
         "--max-tokens", "4", "--concurrency", "2", "--repeats", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    for key in ("plain_output_tokens_per_s", "secure_output_tokens_per_s", "secure_over_plain"):
        assert data[key] > 0, key
    assert len(data["secure_over_plain_per_run"]) == 2 and all(r > 0 for r in data["secure_over_plain_per_run"])
    for side in ("plain", "secure"):
        assert [run["output_tokens"] for run in data[side]] == [16, 16]
        assert all(run["errors"] == 0 for run in data[side])
    secure, plain = data["sides"]["secure"]["flags"], data["sides"]["plain"]["flags"]
    for flag in ("--ssl-certfile", "--api-key-file", "--audit-log", "--internal-transport"):
        assert flag in secure
    assert secure[secure.index("--internal-transport") + 1] == "tcp"
    assert plain == ["--internal-transport", "ipc"]
    assert data["sides"]["secure"]["audit_lines"] >= 8  # every measured request was audited
    assert data["model"] and data["machine"]["logical_cores"] > 0 and "cpu_flags" in data["machine"]
    assert "https://127.0.0.1:" in result.stdout + result.stderr  # the secure side served HTTPS
    assert "sk-bench-" not in result.stdout + result.stderr + out.read_text()  # the key never shows
