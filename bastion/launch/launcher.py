"""`bastion serve`: bind the listening socket once, start engine ranks and API servers, watch them.

Order: validate flags -> bind the HTTP socket (a taken port fails before any model loads) ->
start every engine rank and the API servers on the shared socket (they load their tokenizer
and HTTP stack meanwhile) -> await the engines' handshakes -> tell every API server where the
engines are -> await theirs -> print the ready line -> watch. An engine that dies is reported to
every API server (its requests fail with 503, /health turns 503 naming the rank) and restarted
with backoff while the other ranks serve (ranks.py); an API server that dies stops the
server, and so does every rank failing. SIGTERM/SIGINT drains (API servers finish in-flight
requests up to --shutdown-timeout), then stops the engines and exits 0; a second signal kills
at once. With --data-parallel-backend ray the engine ranks are Ray actors instead of children
(ray/ranks.py), watched and restarted the same way.
"""
from __future__ import annotations

import dataclasses
import logging
import select
import shutil
import signal
import socket
import sys

from bastion.config.serve import ServeConfig
from bastion.launch.environment import child_environment
from bastion.launch.multinode.registry import Registrar
from bastion.launch.procs import Child, ChildStartError, await_all
from bastion.launch.ranks import EngineRanks
from bastion.security.ratelimit import Limiter
from bastion.security.shared_limits import LimitsService
from bastion.transport import channel
from bastion.transport.addresses import url_host
from bastion.transport.child_pipe import ApiServerSpec, EngineEndpoint, EngineReady, EngineSet, EngineSpec

logger = logging.getLogger(__name__)

API_SERVER_STARTUP_TIMEOUT = 120.0
ENGINE_STOP_TIMEOUT = 5.0


class StopRequested(Exception):
    """A signal arrived while starting (or a second one while draining): stop now."""

    def __init__(self, signum: int) -> None:
        self.signum = signum


class Launcher:
    """Runs one server: its processes, their start-up, their watch and their shutdown.

    Under a supervisor (one server per rank) `label` prefixes its children's names,
    `first_rank` is the data-parallel rank of its first engine (it picks the GPU) and
    `limits_dir` is the supervisor's limits service, used instead of one of its own.
    """

    def __init__(self, config: ServeConfig, label: str = "", first_rank: int = 0,
                 limits_dir: str | None = None) -> None:
        self.config, self.label, self.first_rank = config, label, first_rank
        self.limits_dir = limits_dir
        self.engines: list[Child] = []
        self.api_servers: list[Child] = []
        self.phase = "starting"
        self.signals: list[int] = []
        self.dirs = [channel.private_ipc_dir(), channel.private_ipc_dir()]
        self.limits: LimitsService | None = None
        self.ranks: EngineRanks | None = None
        self.registrar: Registrar | None = None
        self.ray = None  # RayRanks under --data-parallel-backend ray

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            sock = bind_listener(self.config.server.host, self.config.server.port)
            try:
                self._start(sock)
            finally:
                sock.close()  # NOTE: the API servers hold their own copies
            return self._watch()
        except ChildStartError as exc:
            print(f"bastion serve: error: {exc}", file=sys.stderr)
            return 1
        except StopRequested as stop:  # a signal during start-up: a requested stop, not a failure
            return 128 + stop.signum if self.phase == "forced" else 0
        finally:
            self._kill_all()
            if self.limits is not None:
                self.limits.stop()
            if self.registrar is not None:
                self.registrar.close()
            if self.ray is not None:
                self.ray.close()
            for folder in self.dirs:
                shutil.rmtree(folder, ignore_errors=True)

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

    def _start(self, sock: socket.socket) -> None:
        cfg, ipc_dir = self.config, str(self.dirs[0])
        env = child_environment(cfg.server.log_level)
        sec = cfg.security
        limits_dir = self.limits_dir if sec.limits_enabled else None
        if sec.limits_enabled and limits_dir is None:
            self.limits = LimitsService(Limiter(sec.max_concurrent_requests, sec.max_waiting_requests),
                                        ipc_dir)
            limits_dir = ipc_dir
        if cfg.ray is not None:
            endpoints, readies, where = self._start_ray_engines(sock, env, limits_dir)
        else:
            endpoints, readies, where = self._start_local_engines(sock, env, limits_dir)
        self._notify_api_servers(EngineSet(endpoints, min(r.max_model_len for r in readies),
                                           readies[0].vocab_size))
        if self.registrar is not None:
            self.registrar.start()
        await_all(self.api_servers, API_SERVER_STARTUP_TIMEOUT)
        host, port = sock.getsockname()[:2]
        shown = url_host(host)
        scheme = "https" if sec.tls.enabled else "http"
        dp, apis = cfg.parallel.data_parallel_size, cfg.parallel.api_server_count
        print(f"bastion: serving {', '.join(cfg.server.served_model_names)} on {scheme}://{shown}:{port} "
              f"({dp} engine rank{'s' * (dp > 1)}{where}, {apis} API server{'s' * (apis > 1)})", flush=True)
        self.phase = "serving"

    def _start_local_engines(self, sock, env, limits_dir):
        """This node's engine ranks as child processes (the rest register from other nodes)."""
        cfg, ipc_dir = self.config, str(self.dirs[0])
        dp, local = cfg.parallel.data_parallel_size, cfg.parallel.local_size
        secret = channel.read_internal_secret(cfg.internal.secret_file) if cfg.internal.secret_file else None
        keys = channel.deployment_keys(dp, cfg.parallel.api_server_count, secret)
        if cfg.parallel.multi_node:  # ranks local .. dp-1 register from other nodes
            self.registrar = Registrar(cfg.parallel.data_parallel_address, cfg.parallel.data_parallel_rpc_port,
                                       secret, range(local, dp), self._notify_api_servers)
        specs = [EngineSpec(i, rank_engine_config(cfg, i), ipc_dir, cfg.internal, keys[i], self.first_rank + i)
                 for i in range(local)]
        self.engines = [Child(f"{self.label}engine-{i}", spec, env=env) for i, spec in enumerate(specs)]
        self._spawn_api_servers(sock, cfg.internal, keys[dp:], limits_dir, env)  # NOTE: load meanwhile
        readies: list[EngineReady] = await_all(self.engines, cfg.engine_startup_timeout)
        self.ranks = EngineRanks(specs, self.engines, self._notify_api_servers, cfg.parallel.max_rank_restarts,
                                 cfg.parallel.rank_restart_window_s, cfg.engine_startup_timeout, env,
                                 self.label)
        endpoints = [EngineEndpoint.of(r) for r in readies]
        endpoints += [EngineEndpoint(i, "") for i in range(local, dp)]  # until their nodes register
        where = f" ({dp - local} on other nodes, registering at {self.registrar.endpoint})" \
            if self.registrar else ""
        return endpoints, readies, where

    def _start_ray_engines(self, sock, env, limits_dir):
        """Every engine rank as a Ray actor; the API servers listen where the actors reach them."""
        from bastion.launch.ray.ranks import RayRanks

        cfg = self.config
        self.ray = RayRanks(cfg, self._notify_api_servers)
        internal = dataclasses.replace(cfg.internal, host=self.ray.connect())
        keys = channel.deployment_keys(0, cfg.parallel.api_server_count)  # engines make their own
        self._spawn_api_servers(sock, internal, keys, limits_dir, env)  # NOTE: load meanwhile
        started = self.ray.start_all([k.public for k in keys], cfg.engine_startup_timeout)
        self.ranks = self.ray
        readies = [s.ready for s in started]
        endpoints = [EngineEndpoint.of(r) for r in readies]
        nodes = sorted({s.node_ip for s in started})
        return endpoints, readies, f" on Ray nodes {', '.join(nodes)}"

    def _spawn_api_servers(self, sock, internal, keys, limits_dir, env) -> None:
        cfg = self.config
        for j in range(cfg.parallel.api_server_count):
            spec = ApiServerSpec(j, cfg.server, cfg.model, sock.fileno(), str(self.dirs[0]), str(self.dirs[1]),
                                 cfg.security, internal, keys[j], limits_dir)
            self.api_servers.append(Child(f"{self.label}api-server-{j}", spec, pass_fds=(sock.fileno(),),
                                          env=env))

    def _watch(self) -> int:
        """Until a signal: restart dead engine ranks; stop if an API server dies or no rank is left."""
        while not self.signals:
            rank_fds = self.ranks.watch_fds()
            api_fds = {c.sentinel: c for c in self.api_servers if c.sentinel >= 0}
            ready, _, _ = select.select([*rank_fds, *api_fds], [], [], self.ranks.next_timeout(0.25))
            for fd in ready:
                if fd in api_fds:
                    return self._api_server_died(api_fds[fd])
                self.ranks.on_readable(rank_fds[fd])
            self.ranks.tick()
            if self.ranks.all_failed:
                print("bastion serve: error: every engine rank has failed (out of restarts); "
                      "stopping", file=sys.stderr)
                return 1
        return self._drain()

    def _api_server_died(self, child: Child) -> int:
        code = child.wait(5)
        child.close()
        logger.error("%s exited with code %s; stopping the server", child.name, code)
        print(f"bastion serve: error: {child.name} exited with code {code}; its last "
              f"log lines:\n{child.last_lines()}", file=sys.stderr)
        return 1

    def _notify_api_servers(self, message) -> None:
        for api in self.api_servers:
            api.send(message)

    def _drain(self) -> int:
        self.phase = "draining"
        logger.warning("stopping: draining in-flight requests (up to %.0f s)",
                       self.config.server.shutdown_timeout)
        try:
            for api in self.api_servers:
                api.signal(signal.SIGTERM)
            for api in self.api_servers:
                api.stop(self.config.server.shutdown_timeout + 5)
            for engine in self._engine_children():
                engine.stop(ENGINE_STOP_TIMEOUT)
            if self.ray is not None:
                self.ray.stop(ENGINE_STOP_TIMEOUT)
        except StopRequested as stop:
            return self._force(stop.signum)
        return 0

    def _engine_children(self) -> list[Child]:
        return self.ranks.children() if self.ranks is not None else self.engines

    def _force(self, signum: int) -> int:
        logger.warning("second signal: stopping at once")
        self._kill_all()
        return 128 + signum

    def _kill_all(self) -> None:
        for child in self.api_servers + self._engine_children():
            child.kill()
            child.wait(10)
            child.close()


def rank_engine_config(config: ServeConfig, index: int):
    """Rank `index`'s engine config: its share of this node's CPU threads."""
    engine = config.engine
    local = config.parallel.local_size  # the ranks that share this node
    if local == 1:
        return engine
    threads = max(1, engine.threads // local)
    return dataclasses.replace(engine, num_threads=threads)


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
