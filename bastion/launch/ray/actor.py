"""One engine rank as a Ray actor: the engine runs as the actor's child process, on the actor's node.

The actor decides everything node-shaped where it runs: its address (`BASTION_HOST_IP` if that
node sets it, else `ray.util.get_node_ip_address()`), its CurveZMQ keypair (made here, so no
engine secret ever crosses Ray), and its port (0: the engine binds and reports the real one).
`start` returns the engine's real endpoint and public key; the driver awaits it before any API
server connects. `wait` returns when the engine exits, so the driver sees a dead engine (a
result) and a dead actor or node (an error) alike.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bastion.config.deployment import InternalConfig
from bastion.config.engine import EngineConfig
from bastion.launch.environment import child_environment
from bastion.launch.net import HOST_IP_ENV
from bastion.launch.procs import Child
from bastion.transport import channel
from bastion.transport.child_pipe import EngineReady, EngineSpec


@dataclass
class RankStarted:
    """What a started rank tells the driver: its engine's handshake and where it runs."""

    ready: EngineReady
    node_ip: str
    actor_pid: int
    engine_pid: int


class RankActor:
    """Hosts one engine rank on its Ray node (made remote with `ray.remote` by the driver)."""

    def __init__(self) -> None:
        self.child: Child | None = None

    def start(self, index: int, config: EngineConfig, api_publics: list[bytes], log_level: str,
              timeout: float) -> RankStarted:
        """Start the engine; return once it is ready (ChildStartError, with its last lines, if not)."""
        import ray

        host = os.environ.get(HOST_IP_ENV, "").strip() or ray.util.get_node_ip_address()
        pair = channel.CurveKeyPair.generate()
        keys = channel.ChannelKeys(pair.public, pair.secret, list(api_publics))
        internal = InternalConfig("tcp", host, encryption=True)
        # NOTE: device_rank 0: Ray shows the actor only the GPUs of its bundle (one per tensor-parallel worker)
        spec = EngineSpec(index, config, "", internal, keys, device_rank=0)  # NOTE: TCP: no ipc directory
        self.child = Child(f"engine-{index}", spec, env=child_environment(log_level))
        ready = self.child.await_handshake(time.monotonic() + timeout)
        return RankStarted(ready, host, os.getpid(), self.child.pid)

    def wait(self) -> int:
        """Block until the engine exits; its exit code."""
        return self.child.proc.wait() if self.child is not None else 0

    def stop(self, timeout: float) -> None:
        """SIGTERM the engine, SIGKILL after `timeout`."""
        if self.child is not None:
            self.child.stop(timeout)
