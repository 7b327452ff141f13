"""Run an offline engine as the workers of one tensor-parallel rank, SPMD: every worker builds
its own `EngineCore` on its shard, gets the same requests, steps in lockstep (the schedulers see
the same inputs and decide alike) and returns its greedy tokens. For tests of the sharded model
before the engine process broadcasts its steps itself."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys
from pathlib import Path
from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.model.parallel.group import TensorGroup
from bastion.model.parallel.plan import TensorParallel
from bastion.sampling_params import SamplingParams

job = json.loads(Path(sys.argv[1]).read_text())
tp = TensorParallel(job["size"], job["rank"])
group = TensorGroup(tp, Path(job["store"]), __import__("torch").device("cpu"), shared_bytes=job["shared_bytes"])
engine = EngineCore(EngineConfig.from_kwargs(job["model"], **job["kwargs"]), tp, group)
arch = engine.runner.arch  # every worker samples here, so every worker gets the whole logits
engine.runner.model.use_tensor_group(group.all_reduce, group.logits_gather(tp.vocab_chunk(arch), arch.vocab_size, to_all=True))
outputs = {}
for i, prompt in enumerate(job["prompts"]):
    engine.add_request(str(i), prompt, SamplingParams(temperature=0, max_tokens=job["max_tokens"], ignore_eos=True))
for _ in range(10_000):
    if not engine.has_unfinished:
        break
    for out in engine.step():
        outputs.setdefault(out.request_id, []).extend(out.new_token_ids)
print(json.dumps([outputs[str(i)] for i in range(len(job["prompts"]))]))
group.close()
"""


def tensor_parallel_greedy(model: Path, size: int, prompts: list[list[int]], max_tokens: int,
                           workdir: Path, timeout: float = 300, shared_bytes: int = 0,
                           **kwargs) -> list[list[list[int]]]:
    """Each worker's greedy tokens for `prompts` (a list per worker); collectives through gloo,
    or through shared memory up to `shared_bytes`."""
    store = workdir / "tp-store"
    store.unlink(missing_ok=True)
    procs = []
    for rank in range(size):
        job = dict(model=str(model), size=size, rank=rank, store=str(store), prompts=prompts,
                   max_tokens=max_tokens, kwargs=kwargs, shared_bytes=shared_bytes)
        job_file = workdir / f"tp-job-{rank}.json"
        job_file.write_text(json.dumps(job))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(job_file)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results
