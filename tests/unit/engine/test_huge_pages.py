"""The engine's memory in huge pages (engine/cpu_memory.py, `--huge-pages`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.engine.cpu_memory import HUGE_PAGE, THP_SETTING, huge_pages_allowed, large_private_regions

MAPS = """\
55aa48a10000-55aa48c00000 r--p 00000000 fd:01 123 /usr/bin/python3.11
55aa48c01000-55ab50000000 rw-p 00000000 00:00 0 [heap]
7fb30d100000-7fb30e600000 rw-p 00000000 00:00 0
7fb30e600000-7fb30e700000 rw-p 00000000 00:00 0
7fb313200000-7fb317200000 rw-s 00000000 00:05 77 /dev/shm/bastion-kv
7fb317200000-7fb31b200000 rw-p 00000000 fd:01 99 /tmp/weights.bin
7fb31b200000-7fb31f200000 r--p 00000000 00:00 0
7ffc1c000000-7ffc1e000000 rw-p 00000000 00:00 0 [stack]
"""


@pytest.mark.parametrize("setting, allowed", [("always [madvise] never", True), ("[always] madvise never", True),
                                              ("always madvise [never]", False), (None, False), ("", False)])
def test_huge_pages_follow_the_systems_setting(setting, allowed):
    assert huge_pages_allowed(setting) is allowed


def test_only_large_private_anonymous_memory_is_moved():
    regions = large_private_regions(MAPS, min_bytes=16 * 2**20)
    # the heap, 2 MiB-aligned inside; the 21 MiB anonymous mapping; not the 1 MiB one, the
    # shared KV file, a file-backed or read-only mapping, or the stack
    assert regions == [(0x55aa48e00000, 0x55ab50000000), (0x7fb30d200000, 0x7fb30e600000)]
    assert all(start % HUGE_PAGE == 0 and end % HUGE_PAGE == 0 for start, end in regions)


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
