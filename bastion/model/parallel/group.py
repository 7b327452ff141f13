"""The workers of one tensor-parallel rank as a torch.distributed process group, kept off the
network: the rendezvous is a `FileStore` in the rank's private directory (never a TCPStore) and
gloo's sockets are bound to loopback (never the hostname's address, never 0.0.0.0).

CPU: a `ProcessGroupGloo` made directly (no default group, no environment variables) with a
device on 127.0.0.1, and the step's collectives through shared memory (shm_reduce.py: gloo's
loopback all-reduce costs ~1.3 ms a call on a small VM). CUDA: NCCL through `init_process_group` on the same FileStore (NCCL's own
bootstrap sockets: see docs/security.md; untested on hardware here).
"""
from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn import functional as F

from bastion.model.parallel.plan import TensorParallel
from bastion.model.parallel.shm_reduce import SharedMemoryReduce

LOOPBACK = "127.0.0.1"


def shared_memory_file(store_path: Path) -> Path:
    """The file of the shared-memory collectives of the rank whose rendezvous file is `store_path`."""
    return Path(f"{store_path}.shm")


class TensorGroup:
    """`all_reduce` over one rank's workers."""

    def __init__(self, tp: TensorParallel, store_path: Path, device: torch.device,
                 timeout_s: float = 300.0, shared_bytes: int = 0,
                 peers_alive: Callable[[], bool] | None = None) -> None:
        """`shared_bytes` > 0 (CPU): collectives of at most that many bytes go through shared
        memory (shm_reduce.py, a file next to the store); larger ones, and all when 0, use gloo."""
        self.tp, self.device, self.store_path = tp, device, store_path
        self.shared: SharedMemoryReduce | None = None
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.FileStore(str(store_path), tp.size)
        await_arrivals(store, tp, timeout_s, peers_alive)
        if device.type == "cuda":
            dist.init_process_group("nccl", store=store, rank=tp.rank, world_size=tp.size, timeout=timeout)
            self.group = None
            return
        shared_path = shared_memory_file(store_path)
        if shared_bytes and tp.rank == 0:  # NOTE: made before the rendezvous, opened after it
            self.shared = SharedMemoryReduce(shared_path, tp.size, 0, shared_bytes, timeout_s, peers_alive)
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=LOOPBACK)]
        options._timeout = timeout
        self.group = dist.ProcessGroupGloo(dist.PrefixStore("tp", store), tp.rank, tp.size, options)
        if shared_bytes and tp.rank != 0:
            self.shared = SharedMemoryReduce(shared_path, tp.size, tp.rank, shared_bytes, timeout_s, peers_alive)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the workers, in place; returns it."""
        if self.shared is not None and self.shared.fits(x):
            return self.shared.all_reduce(x)
        if self.group is None:
            dist.all_reduce(x)
        else:
            self.group.allreduce([x]).wait()
        return x

    def broadcast(self, x: torch.Tensor, root: int = 0) -> torch.Tensor:
        """Worker `root`'s `x` into every worker's `x` (same shape and dtype), in place."""
        if self.shared is not None and self.shared.fits(x):
            return self.shared.broadcast(x, root)
        if self.group is None:
            dist.broadcast(x, root)
        else:
            self.group.broadcast(x, root).wait()
        return x

    def gather_columns(self, x: torch.Tensor, to_all: bool = False) -> torch.Tensor | None:
        """Every worker's `x` [rows, n] (one shape everywhere) side by side, [rows, size * n] in
        worker order, on worker 0 (on every worker with `to_all`); None on the others. Through
        shared memory in as many pieces of rows as it takes (each copied out before the next),
        else gloo/NCCL."""
        rows, n = x.shape
        size, receives = self.tp.size, to_all or self.tp.rank == 0
        rows_per = self.shared.capacity // (n * x.element_size()) if self.shared is not None else 0
        if not rows_per:
            parts = [torch.empty_like(x) for _ in range(size)]
            if self.group is None:
                dist.all_gather(parts, x)
            else:
                self.group.allgather([parts], [x]).wait()
            return torch.cat(parts, dim=1) if receives else None
        out = x.new_empty(rows, size * n) if receives else None
        for i in range(0, rows, rows_per):
            parts = self.shared.gather(x[i:i + rows_per].contiguous(), None if to_all else 0)
            for w, part in enumerate(parts or []):
                out[i:i + part.shape[0], w * n:(w + 1) * n].copy_(part)
        return out

    def logits_gather(self, chunk: int, vocab: int,
                      to_all: bool = False) -> Callable[[torch.Tensor], torch.Tensor | None]:
        """For a vocabulary-parallel LM head: each worker's logits [rows, <= chunk] in, the
        whole [rows, vocab] out on worker 0 (every worker with `to_all`; None elsewhere)."""
        def gather(local: torch.Tensor) -> torch.Tensor | None:
            if local.shape[1] < chunk:  # the last worker's share may be short
                local = F.pad(local, (0, chunk - local.shape[1]))
            whole = self.gather_columns(local.contiguous(), to_all)
            return None if whole is None else whole[:, :vocab]
        return gather

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        if self.group is None and dist.is_initialized():
            dist.destroy_process_group()
        self.group = None


def await_arrivals(store: dist.Store, tp: TensorParallel, timeout_s: float,
                   peers_alive: Callable[[], bool] | None, poll_s: float = 0.05) -> None:
    """Mark this worker arrived and wait until every worker has, before the rendezvous that
    cannot be interrupted (gloo's and NCCL's wait out their whole timeout on a missing peer).
    A peer that has exited by then fails this at once instead (`peers_alive`, worker 0)."""
    store.set(f"arrived/{tp.rank}", "1")
    keys = [f"arrived/{r}" for r in range(tp.size)]
    deadline = time.monotonic() + timeout_s
    while not store.check(keys):
        if peers_alive is not None and not peers_alive():
            raise RuntimeError("a tensor-parallel worker has exited before joining its group")
        if time.monotonic() > deadline:
            missing = [r for r in range(tp.size) if not store.check([f"arrived/{r}"])]
            raise RuntimeError(f"tensor-parallel workers {missing} did not join within {timeout_s:.0f} s")
        time.sleep(poll_s)
