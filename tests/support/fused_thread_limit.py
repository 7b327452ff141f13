"""Run in a child process by tests/unit/model/test_fused_decode.py: greedy tokens of the demo
model through the fused decode step and through the eager model, with more OpenMP threads asked
for (`--num-threads`, argv[1]) than the team may have (OMP_THREAD_LIMIT / OMP_DYNAMIC in the
environment). Prints one JSON line: both token lists. A step that writes past its scratch
buffers corrupts the heap and the process dies (glibc aborts) instead of printing."""
from __future__ import annotations

import json
import sys

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.model.demo import DEMO_MODEL_DIR
from bastion.sampling_params import SamplingParams


def greedy(threads: int, eager: bool) -> list[list[int]]:
    engine = EngineCore(EngineConfig.from_kwargs(str(DEMO_MODEL_DIR), dtype="float32", num_threads=threads,
                                                 block_size=4, num_kv_blocks=256, enforce_eager=eager))
    assert eager or engine.runner.model.fused_decoder is not None
    outputs = []
    for length in (1, 2, 3, 5, 8, 13):  # with 40 new tokens: every context length from 2 to 52
        engine.add_request(str(length), list(range(7, 7 + length)),
                           SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        tokens: list[int] = []
        while engine.has_unfinished:
            for out in engine.step():
                tokens += out.new_token_ids
        outputs.append(tokens)
    return outputs


if __name__ == "__main__":
    threads = int(sys.argv[1])
    print(json.dumps({"fused": greedy(threads, eager=False), "eager": greedy(threads, eager=True)}))
