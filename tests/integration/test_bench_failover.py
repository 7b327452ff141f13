"""`bastion bench failover` on a deployment it starts itself: a rank is killed under load, comes
back, the healthy rank sees no error, and the promised JSON keys are written."""
from __future__ import annotations

import json
import subprocess
import sys

from supervisor_process import no_rank_left


def test_bench_failover_kills_a_rank_and_measures_its_recovery(tmp_path):
    out = tmp_path / "failover.json"
    result = subprocess.run([sys.executable, "-m", "bastion.cli", "bench", "failover", "--warmup-s", "1",
                             "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["fault"] == "kill" and data["victim"] == 1 and data["ranks"] == 2
    assert data["detection_s"] is not None and data["recovery_s"] is not None
    assert data["detection_s"] <= data["recovery_s"]
    assert data["errors_on_healthy_ranks"] == 0 and data["requests_on_healthy_ranks"] > 0
    assert set(data["targets_met"]) == {"detection_s", "recovery_s", "errors_on_healthy_ranks"}
    assert "ready again" in result.stdout and no_rank_left()


def test_bench_failover_needs_two_ranks():
    result = subprocess.run([sys.executable, "-m", "bastion.cli", "bench", "failover", "--ranks", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--ranks must be at least 2" in result.stderr
