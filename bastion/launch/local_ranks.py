"""This node's engine ranks as child processes of the launcher (on the head or a headless node).

    starting --handshake--> ready --exits--> restarting --due--> starting (a new child)
    starting --fails, or not ready in time--> restarting;  restarting --out of restarts--> failed

A restarted engine's handshake is awaited without blocking the launcher: its stdout is in the
launcher's select set, and so is a ready engine's pidfd (readable once it exits).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time

from bastion.config.deployment import InternalConfig
from bastion.config.engine import EngineConfig
from bastion.config.serve import ServeConfig
from bastion.launch.procs import Child, ChildStartError, await_all
from bastion.launch.ranks import Notify, Rank, RankSet, Watch
from bastion.launch.restart import RestartPolicy
from bastion.transport import channel
from bastion.transport.channel import ChannelKeys
from bastion.transport.child_pipe import EngineReady, EngineSpec
from bastion.transport.rank_state import RankState

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class _LocalRank(Rank):
    spec: EngineSpec
    child: Child | None = None


class LocalRanks(RankSet):
    """Ranks `--data-parallel-start-rank` .. `+ --data-parallel-size-local - 1` as children.

    `label` prefixes their names and `device_offset` is the data-parallel rank of the first one
    (it picks the GPU), both for a launcher under a supervisor; `env` is every child's environment.
    """

    def __init__(self, config: ServeConfig, notify: Notify, ipc_dir: str, env: dict[str, str],
                 label: str = "", device_offset: int = 0) -> None:
        super().__init__(notify)
        self.config, self.ipc_dir, self.env = config, ipc_dir, env
        self.label, self.device_offset = label, device_offset
        self.ranks: list[_LocalRank] = []

    def start(self, api_servers: int) -> tuple[InternalConfig, list[ChannelKeys]]:
        cfg, par = self.config, self.config.parallel
        secret = channel.read_internal_secret(cfg.internal.secret_file) if cfg.internal.secret_file else None
        keys = channel.deployment_keys(par.data_parallel_size, api_servers, secret)
        first = par.data_parallel_start_rank
        for index in range(first, first + par.local_size):
            spec = EngineSpec(index, rank_engine_config(cfg, index), self.ipc_dir, cfg.internal, keys[index],
                              self.device_offset + index - first)
            rank = _LocalRank(index, RestartPolicy(par.max_rank_restarts, par.rank_restart_window_s), spec=spec)
            self.ranks.append(rank)
            self._spawn(rank)
        return cfg.internal, keys[par.data_parallel_size:]

    def await_ready(self, timeout: float) -> list[EngineReady]:
        readies = await_all([rank.child for rank in self.ranks], timeout)
        for rank in self.ranks:
            rank.state = RankState.READY
        return readies

    def watch(self, longest: float) -> Watch:
        now = time.monotonic()
        fds, waits = {}, [longest]
        for rank in self.ranks:
            if rank.due is not None:
                waits.append(rank.due - now)
            if rank.child is None:
                continue
            if rank.state == RankState.READY:
                if rank.child.sentinel >= 0:
                    fds[rank.child.sentinel] = functools.partial(self._exited, rank)
            else:
                fds[rank.child.proc.stdout.fileno()] = functools.partial(self._handshake, rank)
                waits.append(rank.deadline - now)
        return fds, max(0.0, min(waits))

    def tick(self) -> None:
        now = time.monotonic()
        for rank in self.ranks:
            if rank.state == RankState.RESTARTING and now >= rank.due:
                rank.state, rank.due = RankState.STARTING, None
                rank.deadline = now + self.config.engine_startup_timeout
                logger.warning("restarting %s (restart %d)", self._name(rank), rank.policy.total)
                self._spawn(rank)
            elif rank.state == RankState.STARTING and now > rank.deadline:
                self._handshake(rank)  # raises inside and counts as a failed start

    def stop(self, timeout: float) -> None:
        for rank in self.ranks:
            if rank.child is not None:
                rank.child.stop(timeout)

    def close(self) -> None:
        for rank in self.ranks:
            if rank.child is not None:
                rank.child.kill()
                rank.child.wait(10)
                rank.child.close()

    def _spawn(self, rank: _LocalRank) -> None:
        rank.child = Child(self._name(rank), rank.spec, env=self.env)

    def _name(self, rank: _LocalRank) -> str:
        return f"{self.label}engine-{rank.index}"

    def _exited(self, rank: _LocalRank) -> None:
        code = rank.child.wait(5)
        rank.child.close()
        rank.child = None
        self._lost(rank, f"{self._name(rank)} exited with code {code}")

    def _handshake(self, rank: _LocalRank) -> None:
        try:
            ready: EngineReady = rank.child.await_handshake(rank.deadline)
        except ChildStartError as exc:
            rank.child.close()
            rank.child = None
            self._lost(rank, str(exc).splitlines()[0])
            return
        logger.warning("%s is ready again", self._name(rank))
        self._back(rank, ready)


def rank_engine_config(config: ServeConfig, index: int) -> EngineConfig:
    """Rank `index`'s engine config: its share of this node's CPU threads, its --kv-role."""
    engine = config.engine.with_kv_role(config.parallel.kv_role_of(index))
    local = config.parallel.local_size  # the ranks that share this node
    if local == 1:
        return engine
    threads = max(1, engine.threads // local)
    return dataclasses.replace(engine, num_threads=threads)
