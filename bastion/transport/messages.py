"""The wire between bastion's processes: typed msgspec messages encoded as msgpack.

No pickle on any socket. Decoding is an allowlist of tagged message types with a size limit;
a malformed or unexpected frame is logged and dropped (it never crashes the receiver).
Sampling parameters travel as `SamplingParams` itself, so decoding re-runs its validation.
Token deltas travel as the engine's own `TokenDelta` (bastion/engine/outputs.py, a leaf of pure
data types): born in the engine's step and sent as is; the API server imports them from here.
"""
from __future__ import annotations

import logging
from typing import Union

import msgspec

from bastion.engine.disagg.handle import KvHandle, KvSource
from bastion.engine.outputs import FinishReason, TokenDelta, TokenLogprob
from bastion.sampling_params import SamplingParams

__all__ = ["AbortRequests", "ClientHello", "EngineLoad", "EngineOutputs", "EngineRequest",
           "FinishReason", "KvHandle", "KvLeaseRelease", "KvPeers", "KvSource", "MAX_FRAME_BYTES", "Message",
           "RequestError", "TokenDelta", "TokenLogprob", "decode", "encode"]

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 2**20


class EngineRequest(msgspec.Struct, tag="request", frozen=True):
    """Front end -> engine: generate for these prompt tokens.

    Disaggregated serving (set by the API server, never from a client's body): `kv_hold` asks a
    prefill rank for the prompt's KV and the first token, then to hold the blocks; `kv_source`
    tells a decode rank where to pull them from and which tokens were already sampled.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str | None = None
    client_index: int = 0
    kv_hold: bool = False
    kv_source: KvSource | None = None


class AbortRequests(msgspec.Struct, tag="abort", frozen=True):
    """Front end -> engine: stop these requests (or single sequences) now and free their blocks."""

    request_ids: list[str] = []
    sequences: list[tuple[str, int]] = []


class ClientHello(msgspec.Struct, tag="hello", frozen=True):
    """Front end -> engine, before its first request: send my results to `output_endpoint`.

    The front end binds that PULL socket itself (in the private ipc directory); the engine
    connects a PUSH socket to it, so results of M API servers never mix.
    """

    client_index: int
    output_endpoint: str
    server_key: bytes = b""  # the CURVE public key of that socket on encrypted TCP


class KvPeers(msgspec.Struct, tag="kv_peers", frozen=True):
    """Front end -> a prefill rank: every engine rank's KV key as this API server knows it now,
    `(rank, restarts, key)`, which its KV listener admits (Ray ranks make their keys on their own
    nodes, so no launcher can name them in a spec). The listener keeps each rank's key of the
    most restarts: a rank that restarted with a new keypair is no longer admitted under its old
    one, and a late message from another API server cannot bring an old key back."""

    peers: list[tuple[int, int, bytes]]


class KvLeaseRelease(msgspec.Struct, tag="kv_lease_release", frozen=True):
    """Front end -> a prefill rank: free the blocks held under this lease now. The API server
    sends it for every handle it does not pass on to a decode rank (the client has gone, no
    decode rank is up, the send failed), so no lease waits out `--kv-lease-s` unpulled."""

    request_id: str
    lease_id: str


class EngineLoad(msgspec.Struct, frozen=True):
    """What an engine publishes for load balancing and metrics."""

    num_running: int
    num_waiting: int
    outstanding_tokens: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    num_preemptions: int = 0  # since the rank started
    kv_transfers: int = 0  # disaggregated serving, since the rank started: KV pulls done here,
    kv_transfer_bytes: int = 0  # their bytes,
    kv_fallbacks: int = 0  # pulls that failed (recomputed or failed by policy),
    kv_lease_expiries: int = 0  # leases of this prefill rank that ran out unpulled,
    kv_leases: int = 0  # and leases held now


class EngineOutputs(msgspec.Struct, tag="outputs", frozen=True):
    """Engine -> front end: one step's token deltas (this front end's requests) plus the load."""

    engine_index: int
    outputs: list[TokenDelta]
    load: EngineLoad | None = None
    kv_pull_seconds: list[float] = []  # each KV pull finished since, for this front end's requests


class RequestError(msgspec.Struct, tag="error", frozen=True):
    """Engine -> front end: a request failed; it is finished with this message."""

    request_id: str
    message: str
    status: int = 400  # the HTTP status the client gets (503: the service could not serve it now)


Message = Union[EngineRequest, AbortRequests, ClientHello, KvPeers, KvLeaseRelease, EngineOutputs, RequestError]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(frame: bytes | memoryview, max_bytes: int = MAX_FRAME_BYTES) -> Message | None:
    """Decode one frame, or log why not and return None."""
    return decode_bounded(_decoder, frame, max_bytes)


def decode_bounded(decoder: msgspec.msgpack.Decoder, frame: bytes | memoryview, max_bytes: int,
                   wire: str = "") -> object | None:
    """One frame through `decoder` (an allowlist of types), or None, logged, when it is larger
    than `max_bytes` or not one of them. `wire` names the channel in the log line."""
    where = f"{wire}: " if wire else ""
    if len(frame) > max_bytes:
        logger.warning("%sdropped a %d-byte frame (limit %d)", where, len(frame), max_bytes)
        return None
    try:
        return decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        logger.warning("%sdropped a malformed frame: %s", where, exc)
        return None
