"""`bastion serve --headless`: this node's engine ranks only, registered with the head.

Ranks `--data-parallel-start-rank` .. `+ --data-parallel-size-local - 1` start here, bind their
CurveZMQ sockets on this node's own address (port 0) and report their real endpoints; the node
then registers them with the head's registrar (keys derived from `--internal-secret-file`) and
heartbeats. A dead engine is restarted with the usual backoff and reported to the head, which
marks the rank down and back up. SIGTERM/SIGINT says goodbye to the head (its ranks are down at
once), stops the engines and exits 0; a second signal kills at once.
"""
from __future__ import annotations

import logging
import select
import shutil
import signal
import sys

from bastion.config.serve import ServeConfig
from bastion.launch.environment import child_environment
from bastion.launch.launcher import ENGINE_STOP_TIMEOUT, StopRequested, rank_engine_config
from bastion.launch.multinode.head_link import Registrant
from bastion.launch.procs import Child, ChildStartError, await_all
from bastion.launch.ranks import EngineRanks
from bastion.transport import channel
from bastion.transport.child_pipe import EngineEndpoint, EngineSpec

logger = logging.getLogger(__name__)


class HeadlessLauncher:
    """Runs one headless node: its engines, their registration, watch and shutdown."""

    def __init__(self, config: ServeConfig) -> None:
        assert config.parallel.headless
        self.config = config
        self.engines: list[Child] = []
        self.ranks: EngineRanks | None = None
        self.registrant: Registrant | None = None
        self.signals: list[int] = []
        self.dir = channel.private_ipc_dir()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            self._start()
            return self._watch()
        except ChildStartError as exc:
            print(f"bastion serve: error: {exc}", file=sys.stderr)
            return 1
        except StopRequested as stop:
            return 128 + stop.signum if len(self.signals) > 1 else 0
        finally:
            if self.registrant is not None:
                self.registrant.close()
            for child in self._children():
                child.kill()
                child.wait(10)
                child.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame) -> None:
        self.signals.append(signum)
        if self.ranks is None or len(self.signals) > 1:
            raise StopRequested(signum)

    def _start(self) -> None:
        cfg, par = self.config, self.config.parallel
        secret = channel.read_internal_secret(cfg.internal.secret_file)
        keys = channel.deployment_keys(par.data_parallel_size, 0, secret)
        first = par.data_parallel_start_rank
        specs = [EngineSpec(r, rank_engine_config(cfg, r), str(self.dir), cfg.internal, keys[r], r - first)
                 for r in range(first, first + par.local_size)]
        env = child_environment(cfg.server.log_level)
        self.engines = [Child(f"engine-{spec.index}", spec, env=env) for spec in specs]
        readies = await_all(self.engines, cfg.engine_startup_timeout)
        endpoints = [EngineEndpoint.of(r) for r in readies]
        self.registrant = Registrant(par.data_parallel_address, par.data_parallel_rpc_port, secret,
                                     cfg.internal.host, endpoints)
        self.ranks = EngineRanks(specs, self.engines, self.registrant.report, par.max_rank_restarts,
                                 par.rank_restart_window_s, cfg.engine_startup_timeout, env)
        print(f"bastion: headless node serving ranks {first}..{first + par.local_size - 1} of "
              f"{par.data_parallel_size} on {cfg.internal.host}, registering with the head at "
              f"{par.data_parallel_address}:{par.data_parallel_rpc_port}", flush=True)

    def _watch(self) -> int:
        while not self.signals:
            fds = self.ranks.watch_fds()
            ready, _, _ = select.select(list(fds), [], [], self.ranks.next_timeout(0.2))
            for fd in ready:
                self.ranks.on_readable(fds[fd])
            self.ranks.tick()
            self.registrant.poll()
            if self.ranks.all_failed:
                print("bastion serve: error: every engine rank of this node has failed (out of "
                      "restarts); stopping", file=sys.stderr)
                return 1
        logger.warning("stopping: telling the head, then stopping this node's engines")
        self.registrant.close()
        self.registrant = None
        for child in self._children():
            child.stop(ENGINE_STOP_TIMEOUT)
        return 0

    def _children(self) -> list[Child]:
        return self.ranks.children() if self.ranks is not None else self.engines
