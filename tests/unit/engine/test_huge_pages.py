"""The engine's memory in huge pages (engine/cpu_memory.py, `--huge-pages`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.engine.cpu_memory import HUGE_PAGE, THP_SETTING, covering_ranges, huge_pages_allowed

@pytest.mark.parametrize("setting, allowed", [("always [madvise] never", True), ("[always] madvise never", True),
                                              ("always madvise [never]", False), (None, False), ("", False)])
def test_huge_pages_follow_the_systems_setting(setting, allowed):
    assert huge_pages_allowed(setting) is allowed


def test_tensors_are_covered_by_whole_huge_pages_merged():
    mib = 2**20
    spans = [(5 * mib, 6 * mib), (3 * mib, 4 * mib + 1), (10 * mib + 7, 10 * mib + 8), (9 * mib, 9 * mib)]
    assert covering_ranges(spans) == [(2 * mib, 6 * mib), (10 * mib, 12 * mib)]
    assert all(start % HUGE_PAGE == 0 and end % HUGE_PAGE == 0 for start, end in covering_ranges(spans))


def _run(flag: str) -> dict:
    script = Path(__file__).parents[2] / "support" / "huge_pages_engine.py"
    proc = subprocess.run([sys.executable, "-P", str(script), flag], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_an_engine_puts_its_kv_pool_in_huge_pages_and_answers_the_same():
    setting = THP_SETTING.read_text() if THP_SETTING.exists() else None
    release = tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit())
    if not huge_pages_allowed(setting) or release < (6, 1):
        pytest.skip(f"no transparent huge pages to ask for here (setting {setting!r}, Linux {os.uname().release})")
    on, off = _run("on"), _run("off")
    assert on["tokens"] == off["tokens"]
    assert on["huge_kb"] >= 256 * 1024  # at least the KV pool
    if "[madvise]" in setting:  # NOTE: with THP always, the kernel may use them unasked
        assert off["huge_kb"] < on["huge_kb"]
