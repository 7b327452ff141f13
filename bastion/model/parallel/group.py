"""The workers of one tensor-parallel rank as a torch.distributed process group, kept off the
network: the rendezvous is a `FileStore` in the rank's private directory (never a TCPStore) and
gloo's sockets are bound to loopback (never the hostname's address, never 0.0.0.0).

CPU: a `ProcessGroupGloo` made directly (no default group, no environment variables) with a
device on 127.0.0.1. CUDA: NCCL through `init_process_group` on the same FileStore (NCCL's own
bootstrap sockets: see docs/security.md; untested on hardware here).
"""
from __future__ import annotations

import datetime
from pathlib import Path

import torch
import torch.distributed as dist

from bastion.model.parallel.plan import TensorParallel

LOOPBACK = "127.0.0.1"


class TensorGroup:
    """`all_reduce` over one rank's workers."""

    def __init__(self, tp: TensorParallel, store_path: Path, device: torch.device,
                 timeout_s: float = 300.0) -> None:
        self.tp, self.device = tp, device
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.FileStore(str(store_path), tp.size)
        if device.type == "cuda":
            dist.init_process_group("nccl", store=store, rank=tp.rank, world_size=tp.size, timeout=timeout)
            self.group = None
            return
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=LOOPBACK)]
        options._timeout = timeout
        self.group = dist.ProcessGroupGloo(dist.PrefixStore("tp", store), tp.rank, tp.size, options)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the workers, in place; returns it."""
        if self.group is None:
            dist.all_reduce(x)
        else:
            self.group.allreduce([x]).wait()
        return x

    def broadcast(self, x: torch.Tensor, root: int = 0) -> torch.Tensor:
        """Worker `root`'s `x` into every worker's `x` (same shape and dtype), in place."""
        if self.group is None:
            dist.broadcast(x, root)
        else:
            self.group.broadcast(x, root).wait()
        return x

    def close(self) -> None:
        if self.group is None and dist.is_initialized():
            dist.destroy_process_group()
        self.group = None
