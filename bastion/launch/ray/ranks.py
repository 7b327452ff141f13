"""The driver side of `--data-parallel-backend ray`: every engine rank is a Ray actor.

`start` joins the cluster (cluster.py). `await_ready` plans where the ranks go (placement.py),
makes one named placement group per rank pinned to its node (one bundle with the CPUs and GPUs
of all the rank's tensor-parallel workers: `RankNeed`), starts a `RankActor` in each and
awaits every rank's real endpoint; nothing port-shaped is chosen here. After start-up the
launcher's watch loop calls `tick`, which polls every rank's outstanding Ray call without
blocking:

    placing (group pending) --ready--> starting (actor's `start`) --ready--> ready (actor's `wait`)
    placing, starting --not ready in time, or the call failed--> restarting
    ready --engine exited, actor or node died--> restarting
    restarting --due--> placing (on a node alive then) | waiting (no node has room) --retry--> ...
    restarting --out of restarts--> failed

A lost rank is reported (`RankDown`), its actor and group are removed, and it is placed again
after the restart policy's backoff on a node the strategy picks among those alive then.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, replace

from bastion.config.deployment import InternalConfig
from bastion.config.serve import ServeConfig
from bastion.launch.procs import ChildStartError
from bastion.launch.ranks import Notify, Rank, RankSet, Watch
from bastion.launch.ray.actor import RankActor, RankStarted
from bastion.launch.ray.cluster import RayCluster
from bastion.launch.ray.placement import NoFit, RankNeed, bundle, nodes_from_ray, place
from bastion.launch.restart import RestartPolicy
from bastion.transport import channel
from bastion.transport.channel import ChannelKeys
from bastion.transport.child_pipe import EngineReady
from bastion.transport.rank_state import RankState

logger = logging.getLogger(__name__)

NO_ROOM_RETRY_S = 2.0
POLL_S = 0.1
WATCH_S = 0.25  # NOTE: Ray calls have no file descriptor: tick() polls them this often
_PLACED = (RankState.PLACING, RankState.STARTING, RankState.READY)


@dataclass(kw_only=True)
class _ActorRank(Rank):
    node: str = ""
    group: object = None  # its placement group
    actor: object = None
    pending: object = None  # the Ray call awaited in this state
    started: RankStarted | None = None
    placements: int = 0


class RayActorRanks(RankSet):
    """Every engine rank of one deployment, as Ray actors."""

    def __init__(self, config: ServeConfig, notify: Notify) -> None:
        assert config.ray is not None
        super().__init__(notify)
        self.config, self.ray_config = config, config.ray
        par = config.parallel
        self.ranks: list[_ActorRank] = [
            _ActorRank(i, RestartPolicy(par.max_rank_restarts, par.rank_restart_window_s), RankState.PLACING)
            for i in range(par.data_parallel_size)]
        self.name = f"bastion-{secrets.token_hex(4)}"  # names this deployment's groups and actors
        self.cluster = RayCluster(config.ray)
        self.api_publics: list[bytes] = []
        self.need = RankNeed(config.ray.cpus_per_rank, 0.0, config.engine.tensor_parallel_size)
        self._remote_actor = None
        self._actor_options: dict = {}

    # -- start-up --------------------------------------------------------------------------

    def start(self, api_servers: int) -> tuple[InternalConfig, list[ChannelKeys]]:
        """Join the cluster. The API servers listen where the actors reach them; each engine makes
        its own keys where it runs, so only the API servers' keys are made here."""
        import ray

        self.cluster.join()
        gpus = self.cluster.gpus_per_worker(self.config.engine.model.device)
        self.need = replace(self.need, gpus_per_worker=gpus)
        # NOTE: the actor holds its whole bundle: Ray shows it (and so its engine's workers) every GPU of it
        self._actor_options = {"num_cpus": self.need.cpus, "num_gpus": self.need.gpus,
                               "max_restarts": 0, "max_concurrency": 4,
                               "runtime_env": {"env_vars": dict(self.ray_config.env_vars)}}
        self._remote_actor = ray.remote(RankActor)
        keys = channel.deployment_keys(0, api_servers)
        self.api_publics = [k.public for k in keys]
        return replace(self.config.internal, host=self.cluster.driver_address()), keys

    def await_ready(self, timeout: float) -> list[EngineReady]:
        """Place and start every rank; ChildStartError (naming the rank and why) if the cluster
        cannot fit them, or a rank fails or misses `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            plan = place([r.index for r in self.ranks], self._nodes(), self.need,
                         self.ray_config.placement_strategy)
        except NoFit as exc:
            raise ChildStartError(str(exc)) from None
        for rank in self.ranks:
            self._create_group(rank, plan[rank.index], deadline)
        while any(r.state != RankState.READY for r in self.ranks):
            self._poll(starting_up=True)
            time.sleep(POLL_S)
        return [r.started.ready for r in self.ranks]

    @property
    def where(self) -> str:
        return f" on Ray nodes {', '.join(sorted({r.started.node_ip for r in self.ranks if r.started}))}"

    # -- the watch ---------------------------------------------------------------------------

    def watch(self, longest: float) -> Watch:
        return {}, min(longest, WATCH_S)

    def tick(self) -> None:
        self._poll(starting_up=False)

    def _poll(self, starting_up: bool) -> None:
        import ray

        waiting = {r.pending: r for r in self.ranks if r.pending is not None}
        done = ray.wait(list(waiting), num_returns=len(waiting), timeout=0)[0] if waiting else []
        for ref in done:
            self._advance(waiting[ref], ref, starting_up)
        now = time.monotonic()
        for rank in self.ranks:
            if rank.state in (RankState.PLACING, RankState.STARTING) and now > rank.deadline:
                self._rank_lost(rank, f"rank {rank.index} did not become ready in time on {rank.node}",
                                starting_up)
            elif rank.state in (RankState.RESTARTING, RankState.WAITING) and now >= rank.due:
                self._replace(rank)

    def _advance(self, rank: _ActorRank, ref, starting_up: bool) -> None:
        import ray

        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            self._rank_lost(rank, _ray_failure(rank, exc), starting_up)
            return
        if rank.state == RankState.PLACING:
            rank.state = RankState.STARTING
            rank.actor = self._remote_actor.options(
                name=f"{self.name}-rank-{rank.index}-{rank.placements}",
                scheduling_strategy=_in_group(rank.group), **self._actor_options).remote()
            engine = self.config.engine.with_kv_role(self.config.parallel.kv_role_of(rank.index))
            config = replace(engine, num_threads=engine.num_threads or self.need.threads)
            rank.pending = rank.actor.start.remote(rank.index, config, self.api_publics,
                                                   self.config.server.log_level,
                                                   max(1.0, rank.deadline - time.monotonic()))
        elif rank.state == RankState.STARTING:
            rank.state, rank.started = RankState.READY, result
            rank.pending = rank.actor.wait.remote()
            logger.warning("engine rank %d is ready on Ray node %s at %s (actor pid %d, engine pid %d)",
                           rank.index, result.node_ip, result.ready.input_endpoint, result.actor_pid,
                           result.engine_pid)
            if not starting_up:
                self._back(rank, result.ready)
        else:  # ready: the engine exited
            self._rank_lost(rank, f"engine-{rank.index} on {rank.node} exited with code {result}", starting_up)

    def _create_group(self, rank: _ActorRank, node_ip: str, deadline: float) -> None:
        from ray.util.placement_group import placement_group

        rank.node, rank.state, rank.deadline = node_ip, RankState.PLACING, deadline
        rank.group = placement_group([bundle(self.need, node_ip)],
                                     strategy="STRICT_PACK",
                                     name=f"{self.name}-rank-{rank.index}-{rank.placements}")
        rank.pending = rank.group.ready()
        rank.placements += 1

    def _replace(self, rank: _ActorRank) -> None:
        """Place a restarting rank again, on a node the strategy picks among those alive now."""
        try:
            node = place([rank.index], self._nodes(), self.need, self.ray_config.placement_strategy)[rank.index]
        except NoFit as exc:
            if rank.state != RankState.WAITING:  # NOTE: said once, not at every retry
                logger.error("engine rank %d waits for room: %s", rank.index, exc)
            rank.state, rank.due = RankState.WAITING, time.monotonic() + NO_ROOM_RETRY_S
            return
        rank.due = None
        logger.warning("restarting engine rank %d on Ray node %s (restart %d)", rank.index, node,
                       rank.policy.total)
        self._create_group(rank, node, time.monotonic() + self.config.engine_startup_timeout)

    def _rank_lost(self, rank: _ActorRank, reason: str, starting_up: bool) -> None:
        """Release what the rank held; during start-up that fails the start, later it restarts."""
        self._release(rank)
        if starting_up:
            raise ChildStartError(reason)
        self._lost(rank, reason)

    def _nodes(self):
        """The alive nodes, each holding the ranks placed on it now."""
        import ray

        nodes = nodes_from_ray(ray.nodes())
        by_ip = {node.ip: node for node in nodes}
        for rank in self.ranks:
            if rank.state in _PLACED and rank.node in by_ip:
                by_ip[rank.node].ranks.append(rank.index)
        return nodes

    def _release(self, rank: _ActorRank) -> None:
        """Kill the rank's actor and remove its placement group (either may be gone already)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        if rank.actor is not None:
            try:
                ray.kill(rank.actor, no_restart=True)
            except Exception:  # NOTE: already dead, or its node is gone
                pass
        if rank.group is not None:
            try:
                remove_placement_group(rank.group)
            except Exception:
                pass
        rank.actor = rank.group = rank.pending = rank.started = None

    # -- shutdown --------------------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        """Stop every engine (SIGTERM, then SIGKILL after `timeout`), then release the actors."""
        import ray

        stops = [r.actor.stop.remote(timeout) for r in self.ranks if r.actor is not None]
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=timeout + 5)
        self.close()

    def close(self) -> None:
        """Kill every actor, remove every group and leave (or stop the local) cluster."""
        if not self.cluster.connected:
            return
        for rank in self.ranks:
            self._release(rank)
        self.cluster.leave()


def _in_group(group):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)


def _ray_failure(rank: _ActorRank, exc: Exception) -> str:
    """A short reason for a failed Ray call: the engine's own error, or the actor's death."""
    import ray

    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
        return f"rank {rank.index} on {rank.node}: {cause}"
    if isinstance(exc, ray.exceptions.RayActorError):
        return f"rank {rank.index}'s actor on {rank.node} died (its node may be gone)"
    return f"rank {rank.index} on {rank.node}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
