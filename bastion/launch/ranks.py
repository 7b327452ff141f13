"""The launcher's engine ranks after start-up: notice deaths, restart with backoff, report.

A rank that dies is reported to every API server at once (`RankDown`: its requests fail with
503, `/health` says the rank is restarting), then started again after the restart policy's
backoff. The new engine's handshake is awaited without blocking the launcher (its stdout is in
the launcher's select set); when it is ready, every API server hears `RankUp` with its new
endpoint. A rank over its restart budget is failed for good.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from bastion.launch.procs import Child, ChildStartError
from bastion.launch.restart import RestartPolicy, after_loss
from bastion.transport.child_pipe import EngineReady, EngineSpec, RankDown, RankUp

logger = logging.getLogger(__name__)


@dataclass
class _Rank:
    spec: EngineSpec
    child: Child | None
    policy: RestartPolicy
    state: str = "ready"  # ready | restarting | failed
    due: float | None = None  # when the next restart starts
    deadline: float = 0.0  # by when a starting engine must be ready


class EngineRanks:
    """Every engine rank of a running server; `notify` reaches every API server."""

    def __init__(self, specs: list[EngineSpec], children: list[Child], notify: Callable,
                 max_restarts: int, window_s: float, startup_timeout: float,
                 env: dict[str, str] | None = None, label: str = "") -> None:
        self.notify, self.startup_timeout, self.env, self.label = notify, startup_timeout, env, label
        self.ranks = [_Rank(spec, child, RestartPolicy(max_restarts, window_s))
                      for spec, child in zip(specs, children)]

    def children(self) -> list[Child]:
        return [r.child for r in self.ranks if r.child is not None]

    @property
    def all_failed(self) -> bool:
        return all(r.state == "failed" for r in self.ranks)

    def watch_fds(self) -> dict[int, int]:
        """fd -> rank index: a ready engine's pidfd, a starting engine's handshake pipe."""
        fds = {}
        for i, rank in enumerate(self.ranks):
            if rank.child is None:
                continue
            fd = rank.child.sentinel if rank.state == "ready" else rank.child.proc.stdout.fileno()
            if fd >= 0:
                fds[fd] = i
        return fds

    def next_timeout(self, default: float) -> float:
        now = time.monotonic()
        times = [r.due - now for r in self.ranks if r.due is not None]
        times += [r.deadline - now for r in self.ranks if r.state == "restarting" and r.child]
        return max(0.0, min([default, *times]))

    def on_readable(self, index: int) -> None:
        rank = self.ranks[index]
        if rank.state == "ready":
            code = rank.child.wait(5)
            rank.child.close()
            self._lost(index, f"{self.label}engine-{rank.spec.index} exited with code {code}")
        else:
            self._handshake(index)

    def tick(self) -> None:
        """Start restarts that are due; give up on engines that missed their start-up deadline."""
        now = time.monotonic()
        for i, rank in enumerate(self.ranks):
            if rank.due is not None and now >= rank.due:
                rank.due, rank.deadline = None, now + self.startup_timeout
                logger.warning("restarting %sengine-%d (restart %d)", self.label, rank.spec.index,
                               rank.policy.total)
                rank.child = Child(f"{self.label}engine-{rank.spec.index}", rank.spec, env=self.env)
            elif rank.state == "restarting" and rank.child is not None and now > rank.deadline:
                self._handshake(i)  # raises inside and counts as a failed start

    def _handshake(self, index: int) -> None:
        rank = self.ranks[index]
        try:
            ready: EngineReady = rank.child.await_handshake(rank.deadline)
        except ChildStartError as exc:
            rank.child.close()
            self._lost(index, str(exc).splitlines()[0])
            return
        rank.state = "ready"
        logger.warning("%sengine-%d is ready again", self.label, rank.spec.index)
        self.notify(RankUp(rank.spec.index, ready.input_endpoint, ready.server_key, rank.policy.total))

    def _lost(self, index: int, reason: str) -> None:
        rank = self.ranks[index]
        rank.child = None
        rank.state, rank.due = after_loss(rank.policy, reason)
        self.notify(RankDown(rank.spec.index, reason, rank.state, rank.policy.total))
