"""Grammar compiles waiting for one API server's check workers: FIFO, bounded per principal and
in all, and a compile whose every waiter has left is dropped before it reaches a worker.

Pure bookkeeping for the API server's `GrammarChecker` (server/grammar_check.py), which starts
the compiles and answers a `CompileQueueFull` with its status and Retry-After. A compile is a
`CompileJob`: one per constraint text at a time, shared by every request that checks the same
constraint while it waits or runs, so only the request that creates it takes a place.
"""
from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from bastion.structured.spec import StructuredOutputs


class CompileQueueFull(Exception):
    """Refused a place: `status` 429 (the principal's bound) or 503 (the bound of all)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(eq=False)
class CompileJob:
    """One constraint's compile: its verdict (the compiler's error, "" when it compiles), how many
    requests wait for it, and whether it has reached a worker (then it runs to its end)."""

    key: str
    spec: StructuredOutputs
    principal: str
    verdict: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    waiters: int = 0
    started: bool = False

    def __post_init__(self) -> None:
        # NOTE: a verdict that fails after every waiter left is read here, not logged as lost
        self.verdict.add_done_callback(lambda f: f.cancelled() or f.exception())


class CompileQueue:
    """Jobs waiting for a worker, oldest first; `admit` refuses past the bounds:
    --structured-output-max-waiting-compiles-per-principal (429) and
    --structured-output-max-waiting-compiles (503)."""

    def __init__(self, max_waiting: int, max_per_principal: int) -> None:
        self.max_waiting, self.max_per_principal = max_waiting, max_per_principal
        self._jobs: collections.deque[CompileJob] = collections.deque()
        self._by_principal: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._jobs)

    def admit(self, job: CompileJob) -> None:
        """Queue `job`, or raise CompileQueueFull (nothing is queued then)."""
        cap = self.max_per_principal
        if self._by_principal[job.principal] >= cap:
            raise CompileQueueFull(429, f"too many grammar compiles waiting: the limit is {cap} "
                                        "waiting at a time per caller "
                                        f"(--structured-output-max-waiting-compiles-per-principal {cap}); "
                                        "retry later")
        if len(self._jobs) >= self.max_waiting:
            raise CompileQueueFull(503, f"the server is overloaded: {len(self._jobs)} grammar compiles "
                                        "are waiting (--structured-output-max-waiting-compiles "
                                        f"{self.max_waiting}); retry later")
        self._jobs.append(job)
        self._by_principal[job.principal] += 1

    def pop(self) -> CompileJob:
        """The oldest waiting job, now leaving the queue for a worker."""
        job = self._jobs.popleft()
        self._forget(job)
        return job

    def drop(self, job: CompileJob) -> None:
        """`job` leaves the queue unrun (no one waits for it any more, or the server stops)."""
        self._jobs.remove(job)
        self._forget(job)

    def _forget(self, job: CompileJob) -> None:
        self._by_principal[job.principal] -= 1
        if self._by_principal[job.principal] <= 0:
            del self._by_principal[job.principal]
