"""A headless node's link to its head: register this node's ranks, heartbeat, report changes.

Non-blocking: the node's launcher calls `poll()` from its watch loop. Until the head welcomes
it, the node says hello every couple of seconds (the head may start later, or restart: an
unknown node is refused and simply registers again). A peer without the deployment's secret
never gets past the CURVE handshake, so a node with the wrong secret is never welcomed and says
so in its log.
"""
from __future__ import annotations

import logging
import time

import msgspec
import zmq

from bastion.launch.multinode import protocol
from bastion.launch.multinode.protocol import Goodbye, Heartbeat, NodeHello, Refusal, Welcome
from bastion.transport import channel
from bastion.transport.addresses import url_host
from bastion.transport.child_pipe import EngineEndpoint, RankDown, RankUp

logger = logging.getLogger(__name__)

HELLO_EVERY_S = 2.0
UNANSWERED_WARNING_S = 10.0


class HeadLink:
    """DEALER to the head's registry at `head:port`, as a CURVE client with the node key."""

    def __init__(self, head: str, port: int, secret: bytes, node: str, engines: list[EngineEndpoint]) -> None:
        self.node, self.engines = node, list(engines)
        self.head = f"{head}:{port}"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_REGISTRATION_BYTES)
        if ":" in head:
            self.sock.ipv6 = True
        channel.curve_client(self.sock, protocol.node_keys(secret),
                             protocol.registry_keys(secret).public)
        self.sock.connect(f"tcp://{url_host(head)}:{port}")
        self.welcomed = False
        self.heartbeat_s = 1.0
        self._next_send = 0.0
        self._since = time.monotonic()
        self._warned = False

    def poll(self, now: float | None = None) -> None:
        """Read the head's answers; send a hello or a heartbeat when one is due."""
        now = time.monotonic() if now is None else now
        while self.sock.poll(0):
            self._answer(self.sock.recv())
        if now < self._next_send:
            return
        if self.welcomed:
            self._send(Heartbeat())
            self._next_send = now + self.heartbeat_s
            return
        self._send(NodeHello(self.node, self.engines))
        self._next_send = now + HELLO_EVERY_S
        if not self._warned and now - self._since > UNANSWERED_WARNING_S:
            self._warned = True
            logger.error("the head at %s has not answered for %.0f s: is it running, and does this node "
                         "hold the same --internal-secret-file?", self.head, now - self._since)

    def _answer(self, payload: bytes) -> None:
        try:
            message = protocol.decode_to_node(payload)
        except msgspec.DecodeError as exc:
            logger.warning("dropped a malformed message from the head: %s", exc)
            return
        if isinstance(message, Welcome):
            if not self.welcomed:
                logger.warning("registered ranks %s with the head at %s", [e.index for e in self.engines],
                               self.head)
            self.welcomed, self.heartbeat_s, self._warned = True, message.heartbeat_s, False
        elif isinstance(message, Refusal):
            if self.welcomed or not self._warned:
                logger.error("the head at %s refused this node: %s", self.head, message.reason)
            # NOTE: a head that forgot us (it restarted, or timed us out) gets a hello at once
            self._next_send = 0.0 if self.welcomed else time.monotonic() + HELLO_EVERY_S
            self.welcomed, self._warned, self._since = False, True, time.monotonic()

    def report(self, message: RankDown | RankUp) -> None:
        """Tell the head about a dead or restarted engine of this node (the hello repeats new endpoints)."""
        if isinstance(message, RankUp):
            self.engines = [EngineEndpoint(e.index, message.input_endpoint, message.server_key,
                                           message.kv_endpoint, message.kv_key, message.kv_role)
                            if e.index == message.index else e for e in self.engines]
        self._send(message)

    def _send(self, message) -> None:
        try:
            self.sock.send(protocol.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            pass  # not connected yet: the next hello or heartbeat goes when it is

    def close(self) -> None:
        """Say goodbye (the head marks this node's ranks down at once) and close."""
        if self.welcomed:
            self._send(Goodbye())
        self.sock.close()
        self.ctx.term()
