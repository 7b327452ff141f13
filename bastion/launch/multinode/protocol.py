"""The wire between a head and its headless nodes: typed msgpack messages over CurveZMQ.

The head's registry is a CURVE server whose keypair derives from the deployment's secret; it
admits only clients holding the derived node key. A peer without the secret fails the CURVE
handshake: it is refused (and logged) before any message, so it learns no address.
"""
from __future__ import annotations

import msgspec

from bastion.transport.channel import CurveKeyPair, derive_keypair
from bastion.transport.child_pipe import EngineEndpoint, RankDown, RankUp

MAX_REGISTRATION_BYTES = 64 * 1024
REGISTRY_ROLE, NODE_ROLE = "registrar", "node"  # NOTE: key derivation: head and nodes must agree


class NodeHello(msgspec.Struct, tag="node_hello"):
    """Node -> head: my ranks are ready at these endpoints (bound on my own address)."""

    node: str  # the node's address, for logs
    engines: list[EngineEndpoint]


class Welcome(msgspec.Struct, tag="welcome"):
    """Head -> node: registered; heartbeat every `heartbeat_s`."""

    heartbeat_s: float


class Refusal(msgspec.Struct, tag="refusal"):
    """Head -> node: not registered, and why (ranks out of range, taken, or unknown node)."""

    reason: str


class Heartbeat(msgspec.Struct, tag="heartbeat"):
    pass


class Goodbye(msgspec.Struct, tag="goodbye"):
    """Node -> head: I am stopping; my ranks are down now."""


# NOTE: a node reports its dead and restarted engines with the launcher's own RankDown/RankUp.
ToHead = NodeHello | Heartbeat | RankDown | RankUp | Goodbye
ToNode = Welcome | Refusal

_encoder = msgspec.msgpack.Encoder()
_to_head = msgspec.msgpack.Decoder(ToHead)
_to_node = msgspec.msgpack.Decoder(ToNode)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_to_head(payload: bytes) -> ToHead:
    return _to_head.decode(payload)


def decode_to_node(payload: bytes) -> ToNode:
    return _to_node.decode(payload)


def registry_keys(secret: bytes) -> CurveKeyPair:
    return derive_keypair(secret, REGISTRY_ROLE)


def node_keys(secret: bytes) -> CurveKeyPair:
    return derive_keypair(secret, NODE_ROLE)
