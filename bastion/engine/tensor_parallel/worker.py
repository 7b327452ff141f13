"""A non-zero tensor-parallel worker: `python -m bastion.engine.tensor_parallel.worker`.

Reads its `TensorWorkerSpec` from stdin, joins the rank's group, loads only its shard of the
model and allocates its part of the KV cache, then runs each step worker 0 broadcasts (the
model and its rows of the LM head: no scheduler, no sampler) until told to stop. It dies with worker 0:
`PR_SET_PDEATHSIG`, and a thread that exits when stdin reaches EOF.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import msgspec
import torch

from bastion.engine.prompt_logprobs import logit_slices
from bastion.engine.tensor_parallel import step_wire
from bastion.engine.tensor_parallel.workers import TensorWorkerSpec, shared_bytes
from bastion.model.attention import attention_context
from bastion.model.parallel.group import TensorGroup
from bastion.model.parallel.plan import TensorParallel
from bastion.transport.child_pipe import read_frame


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        os._exit(0)


def _exit_on_eof(stdin) -> None:
    while stdin.read(4096):
        pass
    os._exit(0)


def main() -> None:
    _die_with_parent()
    stdin = os.fdopen(0, "rb", buffering=0)
    payload = read_frame(stdin)
    if payload is None:
        sys.exit(1)
    spec = msgspec.msgpack.decode(payload, type=TensorWorkerSpec)
    threading.Thread(target=_exit_on_eof, args=(stdin,), daemon=True).start()
    level = os.environ.get("BASTION_LOG_LEVEL", "warning").upper()
    logging.basicConfig(level=level, format=f"tp-worker-{spec.rank} %(levelname)s %(name)s: %(message)s")
    if spec.cores:
        os.sched_setaffinity(0, spec.cores)
    run_worker(spec)


@torch.inference_mode()
def run_worker(spec: TensorWorkerSpec) -> None:
    from bastion.engine.runner import ModelRunner

    from bastion.model.loader import resolve_device

    tp = TensorParallel(spec.size, spec.rank)
    group = TensorGroup(tp, Path(spec.store), resolve_device(spec.config.model.device),
                        shared_bytes=shared_bytes(spec.config))
    runner = ModelRunner(spec.config, tp, group)
    header = torch.zeros(step_wire.HEADER, dtype=torch.int64)
    while True:
        group.broadcast(header)
        if int(header[0]) == step_wire.STOP:
            break
        payload = torch.empty(int(header[3]), dtype=torch.int64)
        group.broadcast(payload)
        input_ids, positions, ctx, logits_indices = step_wire.decode(header, payload, runner.block_size,
                                                                     runner.device)
        with attention_context(ctx):
            hidden = runner.model(input_ids, positions)
        for rows in logit_slices(hidden[logits_indices], runner.logit_slice_rows):
            runner.model.compute_logits(rows)  # this worker's share of the vocabulary, as worker 0 slices
    group.close()


if __name__ == "__main__":
    main()
