"""`bastion serve --headless`: this node's engine ranks only, registered with the head.

Ranks `--data-parallel-start-rank` .. `+ --data-parallel-size-local - 1` start here, bind their
CurveZMQ sockets on this node's own address (port 0) and report their real endpoints; the node
then registers them with the head's registry (keys derived from `--internal-secret-file`) and
heartbeats. A dead engine is restarted with the usual backoff and reported to the head, which
marks the rank down and back up. SIGTERM/SIGINT says goodbye to the head (its ranks are down at
once), stops the engines and exits 0; a second signal kills at once.
"""
from __future__ import annotations

import logging

from bastion.config.serve import ServeConfig
from bastion.launch.launcher import Launcher
from bastion.launch.multinode.head_link import HeadLink
from bastion.transport import channel
from bastion.transport.child_pipe import EngineEndpoint, RankDown, RankUp

logger = logging.getLogger(__name__)


class HeadlessLauncher(Launcher):
    """A launcher without API servers whose local ranks report to the head through `head_link`."""

    ALL_FAILED = "every engine rank of this node has failed (out of restarts); stopping"

    def __init__(self, config: ServeConfig) -> None:
        assert config.parallel.headless
        super().__init__(config)
        self.head_link: HeadLink | None = None

    def _start(self) -> None:
        cfg, par = self.config, self.config.parallel
        secret = channel.read_internal_secret(cfg.internal.secret_file)
        self.ranks.start(api_servers=0)
        readies = self.ranks.await_ready(cfg.engine_startup_timeout)
        self.head_link = HeadLink(par.data_parallel_address, par.data_parallel_rpc_port, secret,
                                  cfg.internal.host, [EngineEndpoint.of(r) for r in readies])
        first = par.data_parallel_start_rank
        print(f"bastion: headless node serving ranks {first}..{first + par.local_size - 1} of "
              f"{par.data_parallel_size} on {cfg.internal.host}, registering with the head at "
              f"{par.data_parallel_address}:{par.data_parallel_rpc_port}", flush=True)
        self.phase = "serving"

    def _notify(self, message: RankDown | RankUp) -> None:
        """Where rank changes go: the head (ranks change only after start-up, so the link is up)."""
        self.head_link.report(message)

    def _poll(self) -> None:
        self.head_link.poll()

    def _drain_front(self) -> None:
        logger.warning("stopping: telling the head, then stopping this node's engines")
        self.head_link.close()
        self.head_link = None

    def _teardown(self) -> None:
        if self.head_link is not None:  # NOTE: goodbye first: the head marks the ranks down at once
            self.head_link.close()
            self.head_link = None
        super()._teardown()
