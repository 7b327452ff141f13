"""The driver side of `--data-parallel-backend ray`: every engine rank is a Ray actor.

`connect` joins the cluster (`--ray-address`, else RAY_ADDRESS, else a new local cluster on this
node's address). `start_all` plans where the ranks go (placement.py), makes one named
placement group per rank pinned to its node, starts a `RankActor` in each and awaits every
rank's real endpoint; nothing port-shaped is chosen here. After start-up the launcher's watch
loop calls `tick`, which polls every rank's outstanding Ray call without blocking:

    placing (group pending) -> starting (actor's `start`) -> ready (actor's `wait`)

A rank whose engine exits, or whose actor or node dies, is reported to every API server
(`RankDown`), its actor and group are removed, and it is placed again after the restart policy's
backoff on a node the strategy picks among those alive then; while no node has room it waits
and retries. A rank over its restart budget is failed for good.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import time
import contextlib
from dataclasses import dataclass, replace
from typing import Callable

from bastion.config.serve import ServeConfig
from bastion.launch.environment import secrets_hidden
from bastion.launch.net import HOST_IP_ENV
from bastion.launch.procs import ChildStartError
from bastion.launch.ray.actor import RankActor, RankStarted
from bastion.launch.ray.placement import NoFit, bundle, nodes_from_ray, place
from bastion.launch.restart import RestartPolicy, after_loss
from bastion.transport.child_pipe import RankDown, RankUp

logger = logging.getLogger(__name__)

NO_ROOM_RETRY_S = 2.0
POLL_S = 0.1


@dataclass
class _Rank:
    index: int
    policy: RestartPolicy
    state: str = "placing"  # placing | starting | ready | restarting | failed
    node: str = ""
    group: object = None  # its placement group
    actor: object = None
    pending: object = None  # the Ray call awaited in this state
    due: float | None = None  # restarting: when to place it again
    deadline: float = 0.0  # placing/starting: by when it must be ready
    started: RankStarted | None = None
    placements: int = 0


class RayRanks:
    """Every engine rank of one deployment, as Ray actors; `notify` reaches every API server."""

    def __init__(self, config: ServeConfig, notify: Callable) -> None:
        assert config.ray is not None
        self.config, self.ray_config, self.notify = config, config.ray, notify
        par = config.parallel
        self.ranks = [_Rank(i, RestartPolicy(par.max_rank_restarts, par.rank_restart_window_s))
                      for i in range(par.data_parallel_size)]
        self.name = f"bastion-{secrets.token_hex(4)}"  # names this deployment's groups and actors
        self.api_publics: list[bytes] = []
        self.gpus = 0.0
        self.connected = False
        self._remote_actor = None
        self._actor_options: dict = {}

    # -- start-up --------------------------------------------------------------------------

    def connect(self) -> str:
        """Join or start the Ray cluster; the address the API servers should listen on."""
        import ray

        address = self.ray_config.address or os.environ.get("RAY_ADDRESS") or None
        host_ip = os.environ.get(HOST_IP_ENV, "").strip() or None
        local_ip = None if address else local_cluster_address(host_ip)
        self._join(address, host_ip, local_ip)
        if local_ip is not None:
            bound = {n["NodeManagerAddress"] for n in ray.nodes()}
            if bound != {local_ip}:
                raise ChildStartError(f"the local Ray cluster took address {', '.join(sorted(bound))}, not "
                                      f"{local_ip}; set {HOST_IP_ENV} to the address it should use")
        gpus = self.ray_config.gpus_per_rank
        if gpus is None:  # one GPU per rank when the cluster has them and the device allows
            wants_gpu = self.config.engine.model.device in ("auto", "cuda")
            gpus = 1.0 if wants_gpu and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        self.gpus = gpus
        self._actor_options = {"num_cpus": self.ray_config.cpus_per_rank, "num_gpus": gpus,
                               "max_restarts": 0, "max_concurrency": 4,
                               "runtime_env": {"env_vars": dict(self.ray_config.env_vars)}}
        self._remote_actor = ray.remote(RankActor)
        return self.ray_config.driver_host or ray.util.get_node_ip_address()

    def _join(self, address: str | None, host_ip: str | None, local_ip: str | None) -> None:
        """ray.init: the cluster at `address`, or a new local one at `local_ip`."""
        import ray

        if local_ip is not None:  # a local cluster: never on the external interface by default
            kwargs = {"_node_ip_address": local_ip, "include_dashboard": False}
        else:
            kwargs = {"_node_ip_address": host_ip} if host_ip else {}
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            # NOTE: a local cluster's processes (and so every actor) inherit os.environ
            with secrets_hidden() if local_ip else contextlib.nullcontext():
                ray.init(address=address, namespace="bastion", logging_level=logging.WARNING,
                         configure_logging=False, **kwargs)
        except Exception as exc:  # NOTE: ray raises ConnectionError, RuntimeError, ValueError ...
            where = address or "a local cluster"
            raise ChildStartError(f"cannot connect to Ray at {where} (--ray-address / RAY_ADDRESS): "
                                  f"{exc}") from None
        finally:
            for sig, handler in handlers.items():  # NOTE: ray.init installs its own SIGTERM handler
                signal.signal(sig, handler)
        self.connected = True

    def start_all(self, api_publics: list[bytes], timeout: float) -> list[RankStarted]:
        """Place and start every rank; return once all are ready. ChildStartError (naming the rank
        and why) if the cluster cannot fit them, or a rank fails or misses `timeout`."""
        self.api_publics = api_publics
        deadline = time.monotonic() + timeout
        try:
            plan = place([r.index for r in self.ranks], self._nodes(), self.ray_config.cpus_per_rank,
                         self.gpus, self.ray_config.placement_strategy)
        except NoFit as exc:
            raise ChildStartError(str(exc)) from None
        for rank in self.ranks:
            self._create_group(rank, plan[rank.index], deadline)
        while any(r.state != "ready" for r in self.ranks):
            self._poll(starting_up=True)
            time.sleep(POLL_S)
        return [r.started for r in self.ranks]

    # -- the launcher's watch interface (as EngineRanks) -----------------------------------

    def watch_fds(self) -> dict[int, int]:
        return {}  # NOTE: Ray calls are polled in tick(), so on_readable is never needed

    def next_timeout(self, default: float) -> float:
        return min(default, 0.25)

    def children(self) -> list:
        return []

    @property
    def all_failed(self) -> bool:
        return all(r.state == "failed" for r in self.ranks)

    def tick(self) -> None:
        self._poll(starting_up=False)

    # -- the state machine -----------------------------------------------------------------

    def _poll(self, starting_up: bool) -> None:
        import ray

        waiting = {r.pending: r for r in self.ranks if r.pending is not None}
        done = ray.wait(list(waiting), num_returns=len(waiting), timeout=0)[0] if waiting else []
        for ref in done:
            self._advance(waiting[ref], ref, starting_up)
        now = time.monotonic()
        for rank in self.ranks:
            if rank.state in ("placing", "starting") and now > rank.deadline:
                self._lost(rank, f"rank {rank.index} did not become ready in time on {rank.node}",
                           starting_up)
            elif rank.state == "restarting" and rank.due is not None and now >= rank.due:
                self._replace(rank)

    def _advance(self, rank: _Rank, ref, starting_up: bool) -> None:
        import ray

        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            self._lost(rank, _ray_failure(rank, exc), starting_up)
            return
        if rank.state == "placing":
            rank.state = "starting"
            rank.actor = self._remote_actor.options(
                name=f"{self.name}-rank-{rank.index}-{rank.placements}",
                scheduling_strategy=_in_group(rank.group), **self._actor_options).remote()
            engine = self.config.engine
            config = replace(engine, num_threads=engine.num_threads or max(1, int(self.ray_config.cpus_per_rank)))
            rank.pending = rank.actor.start.remote(rank.index, config, self.api_publics,
                                                   self.config.server.log_level,
                                                   max(1.0, rank.deadline - time.monotonic()))
        elif rank.state == "starting":
            rank.state, rank.started = "ready", result
            rank.pending = rank.actor.wait.remote()
            ready = result.ready
            logger.warning("engine rank %d is ready on Ray node %s at %s (actor pid %d, engine pid %d)",
                           rank.index, result.node_ip, ready.input_endpoint, result.actor_pid,
                           result.engine_pid)
            if not starting_up:
                self.notify(RankUp(rank.index, ready.input_endpoint, ready.server_key, rank.policy.total))
        else:  # ready: the engine exited
            self._lost(rank, f"engine-{rank.index} on {rank.node} exited with code {result}", starting_up)

    def _create_group(self, rank: _Rank, node_ip: str, deadline: float) -> None:
        from ray.util.placement_group import placement_group

        rank.node, rank.state, rank.deadline = node_ip, "placing", deadline
        rank.group = placement_group([bundle(self.ray_config.cpus_per_rank, self.gpus, node_ip)],
                                     strategy="STRICT_PACK",
                                     name=f"{self.name}-rank-{rank.index}-{rank.placements}")
        rank.pending = rank.group.ready()
        rank.placements += 1

    def _replace(self, rank: _Rank) -> None:
        """Place a restarting rank again, on a node the strategy picks among those alive now."""
        try:
            node = place([rank.index], self._nodes(), self.ray_config.cpus_per_rank, self.gpus,
                         self.ray_config.placement_strategy)[rank.index]
        except NoFit as exc:
            if rank.node != "waiting":  # NOTE: said once, not at every retry
                logger.error("engine rank %d waits for room: %s", rank.index, exc)
            rank.node, rank.due = "waiting", time.monotonic() + NO_ROOM_RETRY_S
            return
        rank.due = None
        logger.warning("restarting engine rank %d on Ray node %s (restart %d)", rank.index, node,
                       rank.policy.total)
        self._create_group(rank, node, time.monotonic() + self.config.engine_startup_timeout)

    def _lost(self, rank: _Rank, reason: str, starting_up: bool) -> None:
        self._release(rank)
        if starting_up:
            raise ChildStartError(reason)
        rank.state, rank.due = after_loss(rank.policy, reason)
        self.notify(RankDown(rank.index, reason, rank.state, rank.policy.total))

    def _nodes(self):
        """The alive nodes, each holding the ranks placed on it now."""
        import ray

        nodes = nodes_from_ray(ray.nodes())
        by_ip = {node.ip: node for node in nodes}
        for rank in self.ranks:
            if rank.state in ("placing", "starting", "ready") and rank.node in by_ip:
                by_ip[rank.node].ranks.append(rank.index)
        return nodes

    def _release(self, rank: _Rank) -> None:
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
        if not self.connected:
            return
        import ray

        for rank in self.ranks:
            self._release(rank)
        ray.shutdown()
        self.connected = False


# NOTE: Ray swaps 127.0.0.1 (and localhost, ::1) for this host's external address; another
# loopback address is kept as given.
LOCAL_CLUSTER_DEFAULT = "127.0.0.2"
_RAY_LOCALHOSTS = ("127.0.0.1", "localhost", "::1")


def local_cluster_address(host_ip: str | None) -> str:
    """Where a local cluster's node lives: BASTION_HOST_IP, else a loopback address Ray keeps."""
    if host_ip and host_ip not in _RAY_LOCALHOSTS:
        return host_ip
    return LOCAL_CLUSTER_DEFAULT


def _in_group(group):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)


def _ray_failure(rank: _Rank, exc: Exception) -> str:
    """A short reason for a failed Ray call: the engine's own error, or the actor's death."""
    import ray

    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
        return f"rank {rank.index} on {rank.node}: {cause}"
    if isinstance(exc, ray.exceptions.RayActorError):
        return f"rank {rank.index}'s actor on {rank.node} died (its node may be gone)"
    return f"rank {rank.index} on {rank.node}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
