"""`bastion serve`: bind the listening socket once, start engine ranks and API servers, watch them.

Order: validate flags -> bind the HTTP socket (a taken port fails before any model loads) ->
start every engine rank and the API servers on the shared socket (they load their tokenizer
and HTTP stack meanwhile) -> await the engines' handshakes -> tell every API server where the
engines are -> await theirs -> print the ready line -> watch. An engine that dies is reported to
every API server (its requests fail with 503, /health turns 503 naming the rank) and restarted
with backoff while the other ranks serve; an API server that dies stops the server, and so does
every rank failing. SIGTERM/SIGINT drains (API servers finish in-flight requests up to
--shutdown-timeout), then stops the engines and exits 0; a second signal kills at once.

The launcher drives its engine ranks through one interface (ranks.py: `RankSet`) and never
asks where they run: child processes of this node (local_ranks.py), or Ray actors with
--data-parallel-backend ray (ray/ranks.py), watched and restarted the same way. On a multi-node
head the ranks of other nodes register with the head's registry (multinode/registry.py); a
headless node runs the same launcher without API servers (multinode/headless.py).
"""
from __future__ import annotations

import logging
import select
import shutil
import signal
import socket
import sys

from bastion.config.serve import ServeConfig
from bastion.launch.environment import child_environment
from bastion.launch.local_ranks import LocalRanks
from bastion.launch.multinode.registry import RemoteRankRegistry
from bastion.launch.procs import Child, ChildStartError, await_all
from bastion.launch.ranks import RankSet
from bastion.security.ratelimit import Limiter
from bastion.security.shared_limits import LimitsService
from bastion.server.responses.store.service import ResponseStoreService
from bastion.transport import channel
from bastion.transport.addresses import url_host
from bastion.transport.child_pipe import ApiServerSpec, EngineEndpoint, EngineReady, EngineSet

logger = logging.getLogger(__name__)

API_SERVER_STARTUP_TIMEOUT = 120.0
ENGINE_STOP_TIMEOUT = 5.0
WATCH_S = 0.25  # the watch loop's longest wait


class StopRequested(Exception):
    """A signal arrived while starting (or a second one while draining): stop now."""

    def __init__(self, signum: int) -> None:
        self.signum = signum


class Launcher:
    """Runs one server: its processes, their start-up, their watch and their shutdown.

    Under a supervisor (one server per rank) `label` prefixes its children's names,
    `first_rank` is the data-parallel rank of its first engine (it picks the GPU) and
    `limits_dir` is the supervisor's limits service, used instead of one of its own.

    The start-up, watch loop, drain and teardown are every launcher's; a headless node
    (multinode/headless.py) is a launcher without API servers whose ranks report to the head:
    it has its own `_start`, and `_notify`, `_poll`, `_drain_front` and `_teardown` are where
    it differs.
    """

    ALL_FAILED = "every engine rank has failed (out of restarts); stopping"

    def __init__(self, config: ServeConfig, label: str = "", first_rank: int = 0,
                 limits_dir: str | None = None) -> None:
        self.config, self.label, self.limits_dir = config, label, limits_dir
        self.api_servers: list[Child] = []
        self.phase = "starting"
        self.signals: list[int] = []
        self.dirs = [channel.private_ipc_dir(), channel.private_ipc_dir()]
        self.env = child_environment(config.server.log_level)
        self.limits: LimitsService | None = None
        self.responses: ResponseStoreService | None = None
        self.registry: RemoteRankRegistry | None = None
        self.ranks = self._engine_ranks(first_rank)

    def _engine_ranks(self, first_rank: int) -> RankSet:
        """Ray actors under --data-parallel-backend ray, else this node's child processes."""
        if self.config.ray is not None:
            from bastion.launch.ray.ranks import RayActorRanks

            return RayActorRanks(self.config, self._notify)
        return LocalRanks(self.config, self._notify, str(self.dirs[0]), self.env, self.label, first_rank)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            self._start()
            return self._watch()
        except ChildStartError as exc:
            print(f"bastion serve: error: {exc}", file=sys.stderr)
            return 1
        except StopRequested as stop:  # a signal during start-up: a requested stop, not a failure
            return 128 + stop.signum if self.phase == "forced" else 0
        finally:
            self._teardown()

    def _on_signal(self, signum: int, frame) -> None:
        self.signals.append(signum)
        if self.phase == "starting":
            raise StopRequested(signum)
        if self.phase == "draining":
            self.phase = "forced"
            raise StopRequested(signum)

    def _on_hangup(self, signum: int, frame) -> None:
        """SIGHUP: every API server reloads its credentials and reopens the audit log."""
        logger.warning("SIGHUP: reloading credentials and reopening the audit log")
        for api in self.api_servers:
            api.signal(signal.SIGHUP)

    def _start(self) -> None:
        signal.signal(signal.SIGHUP, self._on_hangup)
        sock = bind_listener(self.config.server.host, self.config.server.port)
        try:
            self._start_serving(sock)
        finally:
            sock.close()  # NOTE: the API servers hold their own copies

    def _start_serving(self, sock: socket.socket) -> None:
        cfg, par = self.config, self.config.parallel
        limits_dir = self._limits_service()
        if cfg.server.responses_store.enabled:  # NOTE: in dirs[0], the API servers' ipc_dir
            self.responses = ResponseStoreService(cfg.server.responses_store, str(self.dirs[0]))
        if par.multi_node:  # ranks local .. dp-1 register from other nodes
            self.registry = RemoteRankRegistry(par.data_parallel_address, par.data_parallel_rpc_port,
                                               channel.read_internal_secret(cfg.internal.secret_file),
                                               range(par.local_size, par.data_parallel_size), self._notify)
        internal, keys = self.ranks.start(par.api_server_count)
        self._spawn_api_servers(sock, internal, keys, limits_dir)  # NOTE: they load meanwhile
        readies: list[EngineReady] = self.ranks.await_ready(cfg.engine_startup_timeout)
        remote = range(len(readies), par.data_parallel_size)  # on other nodes: reached once they register
        endpoints = [EngineEndpoint.of(r) for r in readies] + [
            EngineEndpoint(i, "", kv_role=par.kv_role_of(i)) for i in remote]
        self._notify(EngineSet(endpoints, min(r.max_model_len for r in readies), readies[0].vocab_size))
        where = self.ranks.where
        if self.registry is not None:
            where += (f" ({par.data_parallel_size - par.local_size} on other nodes, registering at "
                      f"{self.registry.endpoint})")
            self.registry.start()
        await_all(self.api_servers, API_SERVER_STARTUP_TIMEOUT)
        host, port = sock.getsockname()[:2]
        shown = url_host(host)
        scheme = "https" if cfg.security.tls.enabled else "http"
        dp, apis = par.data_parallel_size, par.api_server_count
        print(f"bastion: serving {', '.join(cfg.server.served_model_names)} on {scheme}://{shown}:{port} "
              f"({dp} engine rank{'s' * (dp > 1)}{where}, {apis} API server{'s' * (apis > 1)})", flush=True)
        self.phase = "serving"

    def _limits_service(self) -> str | None:
        """Where the API servers find the limits service: the supervisor's, else one started here."""
        limiter = limiter_for(self.config, self.config.parallel.data_parallel_size)
        if limiter is None:
            return None
        if self.limits_dir is not None:
            return self.limits_dir
        self.limits = LimitsService(limiter, str(self.dirs[0]))
        return str(self.dirs[0])

    def _spawn_api_servers(self, sock, internal, keys, limits_dir) -> None:
        cfg = self.config
        for j in range(cfg.parallel.api_server_count):
            name = f"{self.label}api-server-{j}"
            spec = ApiServerSpec(j, cfg.server, cfg.model, sock.fileno(), str(self.dirs[0]), str(self.dirs[1]),
                                 cfg.security, internal, keys[j], limits_dir, name)
            self.api_servers.append(Child(name, spec, pass_fds=(sock.fileno(),), env=self.env))

    def _watch(self) -> int:
        """Until a signal: tend the ranks (restarts); stop if an API server dies or every rank failed."""
        while not self.signals:
            rank_fds, timeout = self.ranks.watch(WATCH_S)
            api_fds = {c.sentinel: c for c in self.api_servers if c.sentinel >= 0}
            ready, _, _ = select.select([*rank_fds, *api_fds], [], [], timeout)
            for fd in ready:
                if fd in api_fds:
                    return self._api_server_died(api_fds[fd])
                rank_fds[fd]()
            self.ranks.tick()
            self._poll()
            if self.ranks.all_failed:
                print(f"bastion serve: error: {self.ALL_FAILED}", file=sys.stderr)
                return 1
        return self._drain()

    def _poll(self) -> None:
        """Whatever else the watch loop tends (a headless node's link to its head)."""

    def _api_server_died(self, child: Child) -> int:
        code = child.wait(5)
        child.close()
        logger.error("%s exited with code %s; stopping the server", child.name, code)
        print(f"bastion serve: error: {child.name} exited with code {code}; its last "
              f"log lines:\n{child.last_lines()}", file=sys.stderr)
        return 1

    def _notify(self, message) -> None:
        """Where rank changes go: every API server."""
        for api in self.api_servers:
            api.send(message)

    def _drain(self) -> int:
        self.phase = "draining"
        try:
            self._drain_front()
            self.ranks.stop(ENGINE_STOP_TIMEOUT)
        except StopRequested as stop:
            return self._force(stop.signum)
        return 0

    def _drain_front(self) -> None:
        """Before the engines stop: the API servers finish their in-flight requests."""
        logger.warning("stopping: draining in-flight requests (up to %.0f s)",
                       self.config.server.shutdown_timeout)
        for api in self.api_servers:
            api.signal(signal.SIGTERM)
        for api in self.api_servers:
            api.stop(self.config.server.shutdown_timeout + 5)

    def _force(self, signum: int) -> int:
        logger.warning("second signal: stopping at once")
        self._kill_all()
        return 128 + signum

    def _kill_all(self) -> None:
        for child in self.api_servers:
            child.kill()
            child.wait(10)
            child.close()
        self.ranks.close()

    def _teardown(self) -> None:
        self._kill_all()
        if self.limits is not None:
            self.limits.stop()
        if self.responses is not None:
            self.responses.stop()
        if self.registry is not None:
            self.registry.close()
        for folder in self.dirs:
            shutil.rmtree(folder, ignore_errors=True)


def bind_listener(host: str, port: int, flags: str = "--host/--port") -> socket.socket:
    """Bind (not yet listen) the one HTTP socket all API servers share; errors name the flags."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port} ({flags}): {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def limiter_for(config: ServeConfig, ranks: int) -> Limiter | None:
    """The one Limiter of a server whose limits service admits to `ranks` engine ranks, or None
    when nothing asks for one (no credentials, limits, --max-concurrent-requests or
    --max-queued-requests). Its slots are the engines' sequences, `ranks` x --max-num-seqs:
    beyond them requests wait in its fair queue, not in the engines' first-come-first-served one."""
    sec = config.security
    max_queued = config.server.max_queued_requests
    if not sec.limits_enabled and max_queued is None:
        return None
    return Limiter(sec.max_concurrent_requests, sec.max_waiting_requests,
                   max_seqs=ranks * config.engine.scheduler.max_num_seqs, max_queued=max_queued,
                   max_principals=sec.max_tracked_principals)
