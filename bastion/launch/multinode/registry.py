"""The head's registry of remote ranks: the registration socket for headless nodes (a thread
of the head's launcher).

A node holding the deployment's secret says hello with its ranks' real endpoints; the registry
checks they are this deployment's remote ranks and not claimed by another live node, welcomes
the node and tells every API server (`RankUp`), which connect and balance over them. A node
that stops heartbeating, says goodbye or reports a dead engine has those ranks marked down
(`RankDown`: their requests fail fast, `/health` names them) while the rest keep serving; a
restarted node registers again and its ranks come back.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

from bastion.launch.multinode import protocol
from bastion.launch.multinode.protocol import Goodbye, Heartbeat, NodeHello, Refusal, Welcome
from bastion.transport import channel
from bastion.transport.addresses import url_host
from bastion.transport.child_pipe import RankDown, RankUp
from bastion.transport.rank_state import RankState

logger = logging.getLogger(__name__)

_HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                       | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
HEARTBEAT_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0


@dataclass
class _Node:
    address: str
    ranks: list[int]
    last_seen: float
    restarts: dict[int, int] = field(default_factory=dict)


class RemoteRankRegistry:
    """Binds `tcp://address:port` (CURVE, node key only); `notify` reaches every API server."""

    def __init__(self, address: str, port: int, secret: bytes, remote_ranks: range,
                 notify: Callable, heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S) -> None:
        self.remote_ranks, self.notify, self.timeout_s = remote_ranks, notify, heartbeat_timeout_s
        self.nodes: dict[bytes, _Node] = {}
        self.registrations: dict[int, int] = {}  # rank -> times registered (restarts = this - 1)
        self.ctx = zmq.Context()
        self.gate = channel.CurveGate(self.ctx, {protocol.node_keys(secret).public})
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_REGISTRATION_BYTES)
        channel.curve_server(self.sock, protocol.registry_keys(secret))
        host = url_host(address)
        if ":" in address:
            self.sock.ipv6 = True
        try:
            self.endpoint = channel.bind(self.sock, f"tcp://{host}:{port}")
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"cannot listen for nodes on {address}:{port} (--data-parallel-address/"
                             f"--data-parallel-rpc-port): {exc.strerror}") from None
        self.monitor = self.sock.get_monitor_socket(_HANDSHAKE_FAILURES)
        self.refused, self._refusal_logged = 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rank-registry", daemon=True)

    def start(self) -> None:
        """Answer nodes from now on (bound already, so a taken port fails before models load)."""
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while not self._stop.is_set():
            ready = dict(poller.poll(200))
            if self.sock in ready:
                frames = self.sock.recv_multipart()
                if len(frames) == 2:
                    self._receive(*frames)
            if self.monitor in ready:
                recv_monitor_message(self.monitor)
                self._log_refusal()
            self._expire(time.monotonic())

    def _log_refusal(self) -> None:
        """A peer failed the CURVE handshake: it does not hold the secret. Logged, at most every 10 s."""
        self.refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= 10:
            self._refusal_logged = now
            logger.warning("refused a peer at the registration port: its CurveZMQ handshake failed (it "
                           "does not hold this deployment's --internal-secret-file); %d refused so far",
                           self.refused)

    def _receive(self, identity: bytes, payload: bytes) -> None:
        try:
            message = protocol.decode_to_head(payload)
        except msgspec.DecodeError as exc:
            logger.warning("dropped a malformed message from a node: %s", exc)
            return
        node = self.nodes.get(identity)
        if isinstance(message, NodeHello):
            self._hello(identity, message)
        elif node is None:
            self._reply(identity, Refusal("unknown node: say hello first"))
        elif isinstance(message, Heartbeat):
            node.last_seen = time.monotonic()
        elif isinstance(message, (RankDown, RankUp)) and message.index in node.ranks:
            node.last_seen = time.monotonic()
            if isinstance(message, RankDown):
                message.reason = f"{message.reason} (node {node.address})"
            self.notify(message)
        elif isinstance(message, Goodbye):
            self._lose(identity, "stopped")

    def _hello(self, identity: bytes, hello: NodeHello) -> None:
        ranks = [e.index for e in hello.engines]
        for other, node in list(self.nodes.items()):  # the same node, restarted: its old link is stale
            if other != identity and node.address == hello.node and set(node.ranks) & set(ranks):
                self._lose(other, "restarted")
        why = self._refusal(identity, ranks)
        if why:
            logger.error("refused node %s: %s", hello.node, why)
            self._reply(identity, Refusal(why))
            return
        if identity in self.nodes:
            self._lose(identity, "registered again")
        self.nodes[identity] = _Node(hello.node, ranks, time.monotonic())
        self._reply(identity, Welcome(HEARTBEAT_S))
        for engine in hello.engines:
            count = self.registrations.get(engine.index, 0)
            self.registrations[engine.index] = count + 1
            self.notify(RankUp(engine.index, engine.input_endpoint, engine.server_key, count,
                               engine.kv_endpoint, engine.kv_key, engine.kv_role))
        logger.warning("node %s registered ranks %s", hello.node, ranks)

    def _refusal(self, identity: bytes, ranks: list[int]) -> str | None:
        """Why a hello's ranks cannot be registered, or None."""
        bad = [r for r in ranks if r not in self.remote_ranks]
        if bad:
            return (f"ranks {bad} are not this deployment's remote ranks "
                    f"{self.remote_ranks.start}..{self.remote_ranks.stop - 1}")
        if not ranks or len(set(ranks)) != len(ranks):
            return "no ranks, or a rank twice"
        taken = sorted({r for other, node in self.nodes.items() if other != identity for r in node.ranks}
                       & set(ranks))
        return f"ranks {taken} belong to another live node" if taken else None

    def _expire(self, now: float) -> None:
        for identity, node in list(self.nodes.items()):
            if now - node.last_seen > self.timeout_s:
                self._lose(identity, f"stopped answering (no heartbeat for {self.timeout_s:g} s)")

    def _lose(self, identity: bytes, why: str) -> None:
        node = self.nodes.pop(identity)
        logger.error("node %s %s: its ranks %s are down", node.address, why, node.ranks)
        for rank in node.ranks:
            self.notify(RankDown(rank, f"node {node.address} {why}", RankState.RESTARTING,
                                 self.registrations.get(rank, 1) - 1))

    def _reply(self, identity: bytes, message) -> None:
        self.sock.send_multipart([identity, protocol.encode(message)])

    def close(self) -> None:
        if hasattr(self, "_thread") and self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=2)
        if hasattr(self, "monitor"):
            self.sock.disable_monitor()
            self.monitor.close(0)
        self.sock.close(0)
        self.gate.stop()
        self.ctx.term()
