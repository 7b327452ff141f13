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
         "--max-tokens", "4", "--concurrency", "2", "--pairs", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    data = record["by_concurrency"]["2"]
    stats = data["ratios"]["secure/plain"]["output_tokens_per_s"]
    assert stats["pairs"] == 2 and len(stats["per_pair"]) == 2 and all(r > 0 for r in stats["per_pair"])
    for side in ("plain", "secure"):
        assert [run["output_tokens"] for run in data["runs"][side]] == [16, 16]
        assert all(run["errors"] == 0 for run in data["runs"][side])
        assert data["medians"][side]["output_tokens_per_s"] > 0
    sides = {side["name"]: side for side in data["sides"]}
    secure, plain = sides["secure"]["command"], sides["plain"]["command"]
    for flag in ("--ssl-certfile", "--api-key-file", "--audit-log", "--internal-transport"):
        assert flag in secure
    assert secure[secure.index("--internal-transport") + 1] == "tcp"
    assert plain[-2:] == ["--internal-transport", "ipc"] and "--api-key-file" not in plain
    assert sides["secure"]["auth"] != "none" and sides["plain"]["auth"] == "none"
    # every measured request (and the warm-up's) was audited
    assert data["audit_lines"] >= 2 * 4 + 2
    assert sides["secure"]["model"] and record["record"]["machine"]["logical_cores"] > 0
    assert sides["secure"]["url"].startswith("https://127.0.0.1:")  # the secure side served HTTPS
    assert sides["plain"]["url"].startswith("http://127.0.0.1:")
    assert "sk-bench-" not in result.stdout + result.stderr + out.read_text()  # the key never shows
