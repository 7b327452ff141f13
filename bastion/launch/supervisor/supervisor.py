"""`bastion serve --data-parallel-multi-port-external-lb -dp N`: one server per rank, supervised.

Rank i is a whole server (its own launcher, engine and API server, with TLS, auth, limits and
audit as configured) on `--port + i`, started as a child that gets its configuration through
the spawn pipe. The supervisor serves `/health`, `/ready` and `/ranks` on its own port (audited
like the ranks' routes; --audit-log-skip-probes keeps its probes out of the ranks' lines), probes
every rank's `/health` (TLS verified, see probe.py) and restarts a rank that exits or turns
unhealthy with backoff while the others serve untouched. Per-principal and global limits hold
across ranks: the supervisor runs the one limits service every rank uses.

Exit codes: 0 after SIGTERM/SIGINT (every rank drained in parallel), 1 when ranks were not
ready within the start-up timeout or fewer than --min-ready-ranks are left, 128+signal when a
second signal cut the drain short. If the supervisor is killed, every rank sees its spawn pipe
close and drains on its own.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import signal
import sys
import time

from bastion.config.serve import ServeConfig
from bastion.launch.environment import child_environment
from bastion.launch.launcher import bind_listener, limiter_for
from bastion.launch.local_ranks import rank_engine_config
from bastion.launch.procs import Child
from bastion.launch.restart import RestartPolicy
from bastion.launch.supervisor.app import build_supervisor_app
from bastion.launch.supervisor.probe import Prober, ProbeTls
from bastion.launch.supervisor.supervised_rank import SupervisedRank
from bastion.security.audit import ProbeToken
from bastion.security.runtime import SecurityRuntime
from bastion.security.shared_limits import LimitsService
from bastion.server.http.server import HttpServer
from bastion.transport import channel
from bastion.transport.addresses import url_host
from bastion.transport.child_pipe import RankServerSpec
from bastion.transport.rank_state import RankState

logger = logging.getLogger(__name__)

TICK_S = 0.05
RANK_STOP_GRACE_S = 5.0  # an unhealthy rank's time to stop after SIGTERM, then SIGKILL
DRAIN_MARGIN_S = 15.0  # beyond --shutdown-timeout: a rank stops its engine and is reaped
FORCED_STOP_S = 3.0


class Supervisor:
    """Starts, probes, restarts and stops the ranks; serves the supervisor endpoints."""

    def __init__(self, config: ServeConfig) -> None:
        assert config.supervisor is not None
        self.config, self.sup = config, config.supervisor
        self.host = probe_host(config.server.host)
        tls = config.security.tls
        self.probe_tls = ProbeTls(tls, self.sup, self.host) if tls.enabled else None
        self.probe_token = ProbeToken.new() if self.sup.audit_skip_probes else None
        scheme = "https" if tls.enabled else "http"
        par = config.parallel
        first = par.data_parallel_start_rank
        self.slots = [SupervisedRank(i, f"{scheme}://{url_host(self.host)}:{rank_port(config, i)}",
                               RestartPolicy(par.max_rank_restarts, par.rank_restart_window_s),
                               self.sup.probe_failure_threshold, self.sup.startup_timeout_s)
                      for i in range(first, first + par.local_size)]
        self.ready_ranks_needed = config.ready_ranks_needed
        self.phase = "starting"  # starting | serving | draining
        self.children: dict[int, Child] = {}
        self.logs: dict[int, str] = {}  # each rank's last log lines when it last exited
        self.limits_dir = None  # made once the supervisor's port is bound
        self.limits: LimitsService | None = None
        self.forced: int | None = None

    def run(self) -> int:
        sock = bind_listener(self.config.server.host, self.sup.port, "--host/--data-parallel-supervisor-port")
        self.port = sock.getsockname()[1]
        self.limits_dir = channel.private_ipc_dir()
        try:
            return asyncio.run(self._main(sock))
        finally:
            sock.close()
            for child in self.children.values():
                child.kill_tree()
                child.wait(10)
                child.close()
            if self.limits is not None:
                self.limits.stop()
            shutil.rmtree(self.limits_dir, ignore_errors=True)

    async def _main(self, sock) -> int:
        loop = asyncio.get_running_loop()
        self.outcome: asyncio.Future = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.security = SecurityRuntime(self.config.security)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        server = HttpServer(build_supervisor_app(self, self.security.authenticator, self.security.audit),
                            self.config.server, self.security.ssl_context, 2.0, own_signals=False)
        serving = await server.start(sock)
        limiter = limiter_for(self.config, self.config.parallel.local_size)  # this node's ranks
        if limiter is not None:
            self.limits = LimitsService(limiter, str(self.limits_dir))
        self.env = child_environment(self.config.server.log_level)
        self.deadline = time.monotonic() + self.sup.startup_timeout_s
        for slot in self.slots:
            self._spawn(slot)
        tasks = [asyncio.create_task(self._probe_loop(slot)) for slot in self.slots]
        tasks.append(asyncio.create_task(self._tick_loop()))
        for task in tasks:
            task.add_done_callback(self._loop_ended)
        failure = await self.outcome
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failure:
            print(f"bastion serve: error: {failure}", file=sys.stderr, flush=True)
        await self._drain()
        server.should_exit = True
        await serving
        self.security.close()
        return 128 + self.forced if self.forced else (1 if failure else 0)

    def _loop_ended(self, task: asyncio.Task) -> None:
        """A probe or tick loop that fails stops the supervisor with the error (not a silent hang)."""
        if not task.cancelled() and task.exception() is not None:
            logger.error("a supervisor loop failed", exc_info=task.exception())
            self._finish(f"internal error in the supervisor: {task.exception()!r}")

    def _finish(self, failure: str | None) -> None:
        if not self.outcome.done():
            self.outcome.set_result(failure)

    def _on_signal(self, signum: int) -> None:
        if self.outcome.done():
            self.forced = signum
            logger.warning("second signal: stopping every rank at once")
        else:
            logger.warning("stopping: every rank drains its in-flight requests (up to %.0f s)",
                           self.config.server.shutdown_timeout)
            self._finish(None)

    def _on_hangup(self) -> None:
        """SIGHUP: the supervisor and every rank reload credentials (ranks reopen audit logs)."""
        self.security.hangup()
        for child in self.children.values():
            child.signal(signal.SIGHUP)

    def _spawn(self, slot: SupervisedRank) -> None:
        spec = RankServerSpec(slot.index, rank_config(self.config, slot.index, self.probe_token),
                              str(self.limits_dir) if self.limits else None)
        child = Child(f"rank-{slot.index}", spec, env=self.env)
        self.children[slot.index] = child
        slot.started(child.pid, time.monotonic())
        asyncio.get_running_loop().add_reader(child.sentinel, self._exited, slot, child)

    def _exited(self, slot: SupervisedRank, child: Child) -> None:
        asyncio.get_running_loop().remove_reader(child.sentinel)
        asyncio.create_task(self._reap(slot, child))

    async def _reap(self, slot: SupervisedRank, child: Child) -> None:
        code = await asyncio.to_thread(child.wait, 5)
        last = await asyncio.to_thread(child.last_line)
        self.logs[slot.index] = child.last_lines(wait=False)
        child.close()
        if self.children.get(slot.index) is child:
            del self.children[slot.index]
        if self.phase == "draining":
            slot.state, slot.pid = RankState.STOPPED, None
            return
        slot.on_exit(code, last, time.monotonic())
        if slot.state != RankState.FAILED:
            logger.error("rank %d %s; restarting it in %.0f s while the other ranks serve", slot.index,
                         slot.reason, slot.restart_at - time.monotonic())
            return
        logger.error("rank %d failed: %s", slot.index, slot.reason)
        left = sum(s.state != RankState.FAILED for s in self.slots)
        if left < self.ready_ranks_needed:
            self._finish(f"rank {slot.index} failed: {slot.reason}\n  {left} rank(s) left, fewer than "
                         f"--min-ready-ranks {self.ready_ranks_needed}; stopping")

    def _stop_rank(self, slot: SupervisedRank, grace: float) -> None:
        child = self.children.get(slot.index)
        if child is None:
            return
        if grace <= 0:
            child.kill_tree()
            return
        child.signal(signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, lambda: child.alive() and child.kill_tree())

    async def _probe_loop(self, slot: SupervisedRank) -> None:
        prober = Prober(slot.url, self.probe_tls, self.sup.probe_timeout_s,
                        self.probe_token.token if self.probe_token else None)
        try:
            while True:
                began = time.monotonic()
                if slot.state not in (RankState.FAILED, RankState.STOPPED):
                    if slot.on_probe(await prober.probe(), time.monotonic()):
                        logger.error("rank %d is unhealthy: %s; stopping it", slot.index, slot.reason)
                        self._stop_rank(slot, RANK_STOP_GRACE_S)
                await asyncio.sleep(max(0.0, self.sup.probe_interval_s - (time.monotonic() - began)))
        finally:
            await prober.close()

    async def _tick_loop(self) -> None:
        while True:
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_due(now):
                    logger.warning("restarting rank %d (restart %d)", slot.index, slot.policy.total)
                    self._spawn(slot)
                elif self.phase == "serving" and slot.start_overdue(now):
                    slot.unhealthy(f"not ready within {self.sup.startup_timeout_s:g} s "
                                   "(--dp-supervisor-startup-timeout-s)")
                    self._stop_rank(slot, 0)
            if self.phase == "starting":
                if sum(slot.ready for slot in self.slots) >= self.ready_ranks_needed:
                    self.phase = "serving"
                    self._announce()
                elif now >= self.deadline:
                    self._finish(self._startup_failure())
            await asyncio.sleep(TICK_S)

    def _announce(self) -> None:
        names = ", ".join(self.config.server.served_model_names)
        urls = ", ".join(slot.url for slot in self.slots)
        scheme = "https" if self.probe_tls else "http"
        par = self.config.parallel
        which = f"{len(self.slots)} ranks"
        if par.local_size < par.data_parallel_size:
            which += f" ({self.slots[0].index}..{self.slots[-1].index} of {par.data_parallel_size})"
        print(f"bastion: supervising {which} of {names} at {urls}; supervisor at "
              f"{scheme}://{url_host(self.host)}:{self.port} (/health, /ready, /ranks)", flush=True)

    def _startup_failure(self) -> str:
        lines = [f"ranks not ready within {self.sup.startup_timeout_s:g} s "
                 "(--dp-supervisor-startup-timeout-s); stopping"]
        for slot in self.slots:
            if slot.ready:
                continue
            probe = slot.last_probe
            lines.append(f"  rank {slot.index} ({slot.url}) is {slot.state}"
                         + (f": {slot.reason}" if slot.reason else "")
                         + (f"; last probe: {probe.error}" if probe and not probe.ok else ""))
            child = self.children.get(slot.index)
            logs = child.last_lines(wait=False) if child else self.logs.get(slot.index, "    (no output)")
            lines.append(f"  its last log lines:\n{logs}")
        return "\n".join(lines)

    async def _drain(self) -> None:
        """Every rank drains in parallel (SIGTERM); a second signal, or the time limit, kills."""
        self.phase = "draining"
        for slot in self.slots:
            if slot.state == RankState.RESTARTING:
                slot.state = RankState.STOPPED
        for child in self.children.values():
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_timeout + DRAIN_MARGIN_S
        while self.children and time.monotonic() < deadline and not self.forced:
            await asyncio.sleep(TICK_S)
        if self.forced:
            for child in self.children.values():
                child.signal(self.forced)  # NOTE: a rank's own second signal: it kills its children
            deadline = time.monotonic() + FORCED_STOP_S
            while self.children and time.monotonic() < deadline:
                await asyncio.sleep(TICK_S)
        for child in list(self.children.values()):
            logger.warning("%s did not stop in time; killing it", child.name)
            child.kill_tree()
        deadline = time.monotonic() + 10
        while self.children and time.monotonic() < deadline:  # reaped by their exit callbacks
            await asyncio.sleep(TICK_S)


def rank_port(config: ServeConfig, index: int) -> int:
    """Where rank `index` serves: --port + its place among this node's ranks."""
    return config.server.port + index - config.parallel.data_parallel_start_rank


def rank_config(config: ServeConfig, index: int, probe: ProbeToken | None = None) -> ServeConfig:
    """Rank `index`'s server: one engine with its share of this node's CPU threads, on
    `rank_port`. Its own launcher never restarts its engine: restarts are the supervisor's, one
    authority per rank. With `probe` (--audit-log-skip-probes) it knows the probe token's digest."""
    one = dataclasses.replace(config.parallel, data_parallel_size=1, max_rank_restarts=0,
                              data_parallel_size_local=None, data_parallel_start_rank=0)
    return dataclasses.replace(
        config, engine=rank_engine_config(config, index), parallel=one, security=dataclasses.replace(
            config.security, audit_skip_probe_sha256=probe.sha256 if probe else None),
        server=dataclasses.replace(config.server, port=rank_port(config, index)), supervisor=None)


def probe_host(host: str) -> str:
    """Where the supervisor reaches ranks bound to `host`: loopback for a wildcard bind."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
