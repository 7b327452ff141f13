"""The engine ranks of one launcher, wherever they run: the interface the launcher drives.

`LocalRanks` (local_ranks.py: child processes of this node, on the head or on a headless node)
and `RayActorRanks` (ray/ranks.py: Ray actors) implement it, so the launcher never asks where a
rank runs. Each rank moves through the states of `RankState` (transport/rank_state.py). A lost
rank is reported to `notify` (`RankDown`: its requests fail with 503, `/health` says what comes
next) and started again after the restart policy's backoff (restart.py: `after_loss`, the one
decision every kind of rank makes); once ready again `notify` hears `RankUp` with its new
endpoint. A rank over its restart budget is failed for good.

`notify` reaches every API server on a head, or the head (head_link.py) on a headless node.
"""
from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

from bastion.config.deployment import InternalConfig
from bastion.launch.restart import RestartPolicy, after_loss
from bastion.transport.channel import ChannelKeys
from bastion.transport.child_pipe import EngineReady, RankDown, RankUp
from bastion.transport.rank_state import RankState

logger = logging.getLogger(__name__)

Notify = Callable[[RankDown | RankUp], None]
Watch = tuple[dict[int, Callable[[], None]], float]


@dataclass
class Rank:
    """One engine rank's record: its state, its restart budget and its clocks."""

    index: int
    policy: RestartPolicy
    state: RankState = RankState.STARTING
    due: float | None = None  # restarting or waiting: when it is started (or placed) again
    deadline: float = 0.0  # starting or placing: by when it must be ready


class RankSet(ABC):
    """Every engine rank of one launcher. The launcher calls, in order: `start` (the ranks begin
    to load while it starts the API servers), `await_ready`, then in its watch loop `watch`, the
    callbacks of the file descriptors that became readable, and `tick`; it stops when
    `all_failed`. A drain calls `stop`; `close` always comes last (also after a failed start)."""

    def __init__(self, notify: Notify) -> None:
        self.notify = notify
        self.ranks: list[Rank] = []

    @abstractmethod
    def start(self, api_servers: int) -> tuple[InternalConfig, list[ChannelKeys]]:
        """Start every rank loading; how `api_servers` API servers reach them: their internal
        channel settings and one key set each."""

    @abstractmethod
    def await_ready(self, timeout: float) -> list[EngineReady]:
        """Every rank's handshake, in rank order; ChildStartError (naming the rank) if one fails
        or misses `timeout`."""

    @property
    def where(self) -> str:
        """Where the ranks run, for the ready line ("" when on this node)."""
        return ""

    @abstractmethod
    def watch(self, longest: float) -> Watch:
        """What to wait on: file descriptor -> what to call once it is readable, and for how long
        to wait at most (`longest`, or less when a restart or a deadline is due sooner)."""

    @abstractmethod
    def tick(self) -> None:
        """Start restarts that are due; give up on ranks that missed their start-up deadline."""

    @property
    def all_failed(self) -> bool:
        return all(rank.state == RankState.FAILED for rank in self.ranks)

    @abstractmethod
    def stop(self, timeout: float) -> None:
        """Stop every engine: SIGTERM, then SIGKILL after `timeout`."""

    @abstractmethod
    def close(self) -> None:
        """Kill whatever still runs and release it; safe to call more than once."""

    def _lost(self, rank: Rank, reason: str) -> None:
        """`rank` is gone for `reason`: restart it after the backoff, or fail it; tell `notify`."""
        now = time.monotonic()
        rank.state, rank.due = after_loss(rank.policy, now)
        if rank.due is None:
            logger.error("%s; it used up its restarts (--max-rank-restarts %d in --rank-restart-window-s "
                         "%.0f): failed", reason, rank.policy.max_restarts, rank.policy.window_s)
        else:
            logger.error("%s; restarting it in %.0f s while the other ranks serve", reason, rank.due - now)
        self.notify(RankDown(rank.index, reason, rank.state, rank.policy.total))

    def _back(self, rank: Rank, ready: EngineReady) -> None:
        """`rank` is ready again at a new endpoint: tell `notify`."""
        rank.state = RankState.READY
        self.notify(RankUp(rank.index, ready.input_endpoint, ready.server_key, rank.policy.total,
                           ready.kv_endpoint, ready.kv_key, ready.kv_role))
