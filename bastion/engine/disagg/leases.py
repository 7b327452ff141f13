"""Prefilled requests whose KV blocks are held for a decode rank to pull, each under a lease.

The engine thread holds and frees; the KV server thread pins a lease while it sends the blocks
(a pinned lease is never freed under it: not when it runs out, not when it is released) and
marks it released when the decode rank confirms. The engine thread releases a lease whose handle
goes no further (the API server says so, or the request was aborted just after its hand-over).
Freed blocks go back to the block manager on the engine thread only (`reap`).
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

from bastion.engine.disagg.handle import KvHandle
from bastion.engine.request import Request


@dataclass
class Lease:
    request: Request
    handle: KvHandle
    deadline: float  # time.monotonic()
    pinned: bool = False
    released: bool = False


class Leases:
    """The held requests of one prefill rank, by lease id (thread-safe)."""

    def __init__(self, rank: int, lease_s: float, on_release: Callable[[], None] | None = None) -> None:
        self.rank, self.lease_s, self.on_release = rank, lease_s, on_release
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self.expired = 0  # leases that ran out unpulled, since the rank started

    def hold(self, req: Request) -> KvHandle:
        """Hold `req`'s blocks (engine thread); the handle names them."""
        lease_id = secrets.token_hex(16)
        handle = KvHandle(self.rank, req.request_id, lease_id, list(req.block_ids),
                          req.num_computed_tokens, time.time() + self.lease_s)
        with self._lock:
            self._leases[lease_id] = Lease(req, handle, time.monotonic() + self.lease_s)
        return handle

    def pin(self, request_id: str, lease_id: str) -> KvHandle | str:
        """The handle of a live lease, pinned until `unpin` (KV server thread); else why not."""
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None or lease.handle.request_id != request_id or lease.released:
                return "no such lease (expired, released, or never held here)"
            if time.monotonic() > lease.deadline:
                return "the lease has expired"
            lease.pinned = True
            return lease.handle

    def unpin(self, lease_id: str) -> None:
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None:
                return
            lease.pinned = False
            released = lease.released  # while it was sent: free it now
        if released and self.on_release is not None:
            self.on_release()

    def release(self, request_id: str, lease_id: str | None = None) -> bool:
        """Free a lease's blocks at the next `reap` (once no pull is sending them): the decode
        rank has them (KV server thread), or its handle goes no further (engine thread). Without
        `lease_id`, the lease of `request_id`. False: no such lease."""
        with self._lock:
            if lease_id is None:
                lease = next((x for x in self._leases.values() if x.handle.request_id == request_id), None)
            else:
                lease = self._leases.get(lease_id)
            if lease is None or lease.handle.request_id != request_id:
                return False
            lease.released = True
        if self.on_release is not None:
            self.on_release()
        return True

    def reap(self) -> list[Request]:
        """Requests whose blocks may be freed now (engine thread): released or expired, unpinned."""
        now, done = time.monotonic(), []
        with self._lock:
            for lease_id, lease in list(self._leases.items()):
                if not lease.pinned and (lease.released or now > lease.deadline):
                    del self._leases[lease_id]
                    done.append(lease.request)
                    self.expired += not lease.released
        return done

    def due(self) -> bool:
        """Some lease can be freed now (released or run out, and not being sent)."""
        now = time.monotonic()
        with self._lock:
            return any(not lease.pinned and (lease.released or now > lease.deadline)
                       for lease in self._leases.values())

    def next_deadline(self) -> float | None:
        """Seconds until the next lease runs out (None: none held)."""
        with self._lock:
            if not self._leases:
                return None
            return max(0.0, min(lease.deadline for lease in self._leases.values()) - time.monotonic())

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)
