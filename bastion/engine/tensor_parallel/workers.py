"""The other workers of a tensor-parallel rank, seen from worker 0 (the engine process).

Worker 0 runs the scheduler and sampler; workers 1..N-1 are child processes of it that run only
their shard of the model (engine/tensor_parallel/worker.py). Each is started with
`python -P -m bastion.engine.tensor_parallel.worker` (child_python.py), its spec (config, place in the group, the rendezvous
file) as one frame on its stdin, never in argv; it dies with worker 0 (`PR_SET_PDEATHSIG`, and
EOF on that stdin). The rendezvous is a torch `FileStore` in the rank's private 0700 directory
and gloo's sockets are on loopback (model/parallel/group.py), so nothing listens on the network.
Every step, worker 0 broadcasts the step's inputs (engine/tensor_parallel/step_wire.py) before its forward pass;
on CPU the collectives go through shared memory in that same directory (model/parallel/shm_reduce.py).
If a worker exits, `watch` reports it (the engine process then exits, and the launcher restarts
the rank as a whole); a collective waiting on a dead worker fails too (offline engines).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

import msgspec
import torch

from bastion.child_python import python_command, python_environment
from bastion.config.engine import EngineConfig
from bastion.engine.tensor_parallel import step_wire
from bastion.engine.tensor_parallel.shared_kv import cache_path
from bastion.model.attention import AttentionContext
from bastion.model.parallel.group import TensorGroup, shared_memory_file
from bastion.model.parallel.plan import TensorParallel
from bastion.transport.child_pipe import write_frame

logger = logging.getLogger(__name__)


class TensorWorkerSpec(msgspec.Struct):
    """What worker `rank` of `size` needs: the engine config and the rendezvous file."""

    config: EngineConfig
    size: int
    rank: int
    store: str
    cores: list[int]  # the CPU cores this worker may use (its share of the rank's)


def core_shares(size: int) -> list[list[int]]:
    """This process's cores split into `size` contiguous shares (empty when too few cores)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < size:
        return [[] for _ in range(size)]
    per = len(cores) // size
    return [cores[i * per:(i + 1) * per] for i in range(size)]


class TensorWorkers:
    """Starts workers 1..N-1, joins them in one group, broadcasts steps, stops them."""

    def __init__(self, config: EngineConfig, private_dir: str | None = None, pin_self: bool = False) -> None:
        """`pin_self`: this process is the engine's own (not a user's offline program): pin it
        to worker 0's share of the cores, as each other worker is pinned to its own."""
        size = config.tensor_parallel_size
        self.tp = TensorParallel(size, 0)
        self._tmp = None if private_dir else tempfile.TemporaryDirectory(prefix="bastion-tp-")
        folder = Path(private_dir or self._tmp.name)
        folder.chmod(0o700)
        store = folder / f"tp-store-{os.getpid()}"
        for stale in (store, shared_memory_file(store), *(cache_path(store, r) for r in range(size))):
            stale.unlink(missing_ok=True)  # NOTE: a dead rank's of the same pid: the makers refuse any file
        shares = core_shares(size)
        self.procs: list[subprocess.Popen] = []
        for rank in range(1, size):
            spec = TensorWorkerSpec(worker_config(config, rank), size, rank, str(store), shares[rank])
            proc = subprocess.Popen(python_command("bastion.engine.tensor_parallel.worker"),
                                    stdin=subprocess.PIPE, close_fds=True, env=python_environment())
            write_frame(proc.stdin.fileno(), spec)
            proc.stdin.flush()
            self.procs.append(proc)  # NOTE: stdin stays open: its EOF tells the worker we are gone
        if pin_self and shares[0]:
            os.sched_setaffinity(0, shares[0])
        self.group = TensorGroup(self.tp, store, _device(config), shared_bytes=shared_bytes(config),
                                 peers_alive=lambda: all(p.poll() is None for p in self.procs))

    def send_step(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext,
                  logits_indices: torch.Tensor) -> None:
        """Broadcast this step's inputs to the other workers (before worker 0's forward pass)."""
        wire = step_wire.encode(input_ids, positions, ctx, logits_indices)
        self.group.broadcast(wire[:step_wire.HEADER].clone())
        self.group.broadcast(wire[step_wire.HEADER:].clone())

    def watch(self, on_exit: Callable[[int, int], None]) -> None:
        """Call `on_exit(worker, returncode)` (from a thread) when a worker process ends."""
        for rank, proc in enumerate(self.procs, start=1):
            threading.Thread(target=lambda r=rank, p=proc: on_exit(r, p.wait()), daemon=True,
                             name=f"tp-worker-{rank}-watch").start()

    def stop(self) -> None:
        """Tell the workers to stop, then make sure they have (kill after 10 s)."""
        try:
            stop = torch.tensor([step_wire.STOP] + [0] * (step_wire.HEADER - 1))
            if all(p.poll() is None for p in self.procs):
                self.group.broadcast(stop)
        except RuntimeError:
            pass
        for proc in self.procs:
            try:
                proc.stdin.close()
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.group.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def shared_bytes(config: EngineConfig) -> int:
    """Room per worker for one collective in shared memory: a step's hidden states in float32
    (the largest all-reduce; the step broadcast is far smaller)."""
    from bastion.model.arch import read_arch_config

    rows = max(config.scheduler.max_num_batched_tokens, config.scheduler.max_num_seqs)
    return rows * read_arch_config(config.model.model).hidden_size * 4


def worker_config(config: EngineConfig, rank: int) -> EngineConfig:
    """Worker `rank`'s config: on CUDA its own device (the rank's first device + `rank`)."""
    device = config.model.device
    if not device.startswith("cuda"):
        return config
    first = int(device.partition(":")[2] or 0)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, device=f"cuda:{first + rank}"))


def _device(config: EngineConfig) -> torch.device:
    from bastion.model.loader import resolve_device
    return resolve_device(config.model.device)
