"""The KV channel's wire: typed msgspec headers, raw tensor bytes beside them, no pickle.

    decode rank (DEALER)                      prefill rank (ROUTER, CURVE server)
      KvPull(request, lease) ---------------->
                             <---------------- KvLayer(i, dtype, shape) + keys bytes + values bytes
                             <----------------   ... one message per layer ...
                             <---------------- KvDone(layers, bytes)   (or KvRefused(reason))
      KvRelease(request, lease) ------------->   the blocks are freed

Headers decode through an allowlist with a size limit; a frame that does not decode is
logged and dropped.
"""
from __future__ import annotations

from typing import Union

import msgspec

from bastion.transport.messages import decode_bounded

MAX_HEADER_BYTES = 4096


class KvPull(msgspec.Struct, tag="pull", frozen=True):
    request_id: str
    lease_id: str


class KvRelease(msgspec.Struct, tag="release", frozen=True):
    request_id: str
    lease_id: str


class KvLayer(msgspec.Struct, tag="layer", frozen=True):
    """Followed by two frames: the layer's keys, then its values, [kv heads, blocks, block, dim]."""

    layer: int
    dtype: str
    shape: list[int]


class KvDone(msgspec.Struct, tag="done", frozen=True):
    layers: int
    nbytes: int


class KvRefused(msgspec.Struct, tag="refused", frozen=True):
    reason: str


KvMessage = Union[KvPull, KvRelease, KvLayer, KvDone, KvRefused]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(KvMessage)


def encode(message: KvMessage) -> bytes:
    return _encoder.encode(message)


def decode(frame: bytes | memoryview) -> KvMessage | None:
    """One header, or None (logged) when it is too large or not one of ours."""
    return decode_bounded(_decoder, frame, MAX_HEADER_BYTES, "KV channel")
