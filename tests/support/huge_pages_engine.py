"""Run in a child process by tests/unit/engine/test_huge_pages.py: builds an engine on the demo
model with a 256 MiB KV pool, `--huge-pages` or `--no-huge-pages` (argv[1]: on/off), decodes
greedily, and prints one JSON line: the tokens and the process's anonymous memory in huge pages
(kB, from /proc/self/smaps_rollup). A fresh process, so no other engine's memory counts."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.model.demo import DEMO_MODEL_DIR
from bastion.sampling_params import SamplingParams


def huge_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    engine = EngineCore(EngineConfig.from_kwargs(str(DEMO_MODEL_DIR), dtype="float32", num_threads=1,
                                                 kv_cache_memory=256 * 2**20, huge_pages=sys.argv[1] == "on"))
    engine.add_request("r", list(range(7, 40)), SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    tokens: list[int] = []
    while engine.has_unfinished:
        for out in engine.step():
            tokens += out.new_token_ids
    print(json.dumps({"tokens": tokens, "huge_kb": huge_kb()}))
