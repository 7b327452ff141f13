"""All-reduce, broadcast and gather through shared memory between the workers of one node.

gloo's all-reduce over loopback costs ~1.3 ms per call on a small VM (docs/benchmarks.md),
and a step makes two per layer. Here every worker maps one file in the rank's private 0700
directory (worker 0 makes it, 0600, refusing anything already at the path; the others never
follow a symbolic link: private_file.py): a row of sequence flags, then two sets (alternating
calls) of one slot per worker. A call copies the worker's tensor into its slot, publishes the
call's sequence number in its flag, waits until every worker has published it (spinning for
200 us, then napping up to 1 ms at a time, so that workers idle between steps do not hold a
core), and sums the slots in worker order, so every worker computes the same bits. Two slot
sets are enough: a worker cannot start call s+2 (which reuses the set of call s) before every
worker has published s+1, i.e. finished reading call s.
x86 keeps ordinary stores in order (the data before the flag), which is what the protocol
relies on; large copies are made in 64 KiB pieces so that no piece is big enough for the C
library to use non-temporal stores, which x86 does not keep in order. x86-64 CPUs only.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bastion.model.parallel.private_file import map_private
FLAG_BYTES = 64  # each worker's flag on its own cache line
PIECE = 64 * 1024  # bytes per copy into a slot: below glibc's non-temporal threshold
SPINS_BEFORE_CHECK = 1000
SPIN_SECONDS = 0.0002  # spin this long (a collective inside a step), then nap ...
MAX_NAP = 0.001        # ... for up to 1 ms at a time: idle workers take no core between steps


class SharedMemoryReduce:
    """Collectives over a shared file; `capacity` bytes per tensor at most."""

    def __init__(self, path: Path, size: int, rank: int, capacity: int, timeout_s: float = 300.0,
                 peers_alive: Callable[[], bool] | None = None) -> None:
        """`peers_alive`, when given, is asked while waiting: False ends the wait with an error
        (worker 0 knows its workers' processes; the others die with worker 0)."""
        self.peers_alive = peers_alive
        capacity = -(-capacity // FLAG_BYTES) * FLAG_BYTES  # slots aligned for any dtype
        self.size, self.rank, self.capacity, self.timeout_s = size, rank, capacity, timeout_s
        self.slots_at = FLAG_BYTES * size
        total = self.slots_at + 2 * size * capacity
        self.map = map_private(path, total, create=rank == 0)  # NOTE: nothing planted at `path` is used
        self.bytes = torch.frombuffer(self.map, dtype=torch.uint8)
        self.flags = np.frombuffer(self.map, dtype=np.int64, count=size * FLAG_BYTES // 8)[::FLAG_BYTES // 8]
        self.sequence = 0

    def _slot(self, which: int, worker: int, nbytes: int) -> torch.Tensor:
        start = self.slots_at + ((which % 2) * self.size + worker) * self.capacity
        return self.bytes[start:start + nbytes]

    @staticmethod
    def _write(slot: torch.Tensor, data: torch.Tensor) -> None:
        for start in range(0, data.numel(), PIECE):
            slot[start:start + PIECE].copy_(data[start:start + PIECE])

    def _publish_and_wait(self, waited: range | list[int]) -> int:
        self.sequence += 1
        seq = self.sequence
        self.flags[self.rank] = seq
        started = None
        for worker in waited:
            spins = 0
            while self.flags[worker] < seq:
                spins += 1
                if spins % SPINS_BEFORE_CHECK == 0:
                    now = time.monotonic()
                    started = started or now
                    if now - started > SPIN_SECONDS:  # NOTE: an idle wait (between steps) sleeps
                        time.sleep(min(MAX_NAP, (now - started) / 8))
                    if self.peers_alive is not None and not self.peers_alive():
                        raise RuntimeError("a tensor-parallel worker has exited")
                    if now - started > self.timeout_s:
                        raise RuntimeError(f"tensor-parallel worker {worker} did not answer in "
                                           f"{self.timeout_s:.0f} s")
        return seq

    def fits(self, x: torch.Tensor) -> bool:
        return x.numel() * x.element_size() <= self.capacity

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the workers in place (the same bits on every worker)."""
        flat = x.reshape(-1)
        nbytes = flat.numel() * flat.element_size()
        call = self.sequence + 1
        self._write(self._slot(call, self.rank, nbytes), flat.view(torch.uint8))
        self._publish_and_wait(range(self.size))
        total = self._slot(call, 0, nbytes).view(x.dtype).clone()
        for worker in range(1, self.size):
            total += self._slot(call, worker, nbytes).view(x.dtype)
        flat.copy_(total)
        return x

    def broadcast(self, x: torch.Tensor, root: int = 0) -> torch.Tensor:
        """Worker `root`'s `x` into every worker's `x`, in place."""
        flat = x.reshape(-1)
        nbytes = flat.numel() * flat.element_size()
        call = self.sequence + 1
        if self.rank == root:
            self._write(self._slot(call, root, nbytes), flat.view(torch.uint8))
        self._publish_and_wait(range(self.size))
        if self.rank != root:
            flat.copy_(self._slot(call, root, nbytes).view(x.dtype))
        return x

    def gather(self, x: torch.Tensor, root: int | None = 0) -> list[torch.Tensor] | None:
        """Every worker's `x` (one shape everywhere), in worker order, on worker `root` (or on
        every worker when `root` is None): views of the slots, valid until the call after next;
        None on the others."""
        flat = x.reshape(-1)
        nbytes = flat.numel() * flat.element_size()
        call = self.sequence + 1
        if self.rank != root:
            self._write(self._slot(call, self.rank, nbytes), flat.view(torch.uint8))
        self._publish_and_wait(range(self.size))
        if root is not None and self.rank != root:
            return None
        return [x if w == self.rank else self._slot(call, w, nbytes).view(x.dtype).view(x.shape)
                for w in range(self.size)]

    def close(self) -> None:
        self.bytes = None
        self.flags = None
        try:
            self.map.close()
        except BufferError:
            pass
