"""What names a prefill rank's held KV blocks, and where a decode rank pulls them from.

A leaf of pure data types (no bastion imports), sent as is: the prefill rank makes the
`KvHandle` when it hands a request over (engine/outputs.py carries it in the `TokenDelta` of
the first token); the API server wraps it in a `KvSource` with the endpoint and key of that
rank's KV listener, taken from the launcher (never from a client), and sends it to a decode rank.
"""
from __future__ import annotations

import msgspec


class KvHandle(msgspec.Struct, frozen=True, array_like=True):
    """Blocks `block_ids` of engine rank `rank` hold the KV of `num_tokens` prompt tokens of
    `request_id` until `expires_at` (wall-clock seconds); `lease_id` (random) must be shown to
    pull or release them."""

    rank: int
    request_id: str
    lease_id: str
    block_ids: list[int]
    num_tokens: int
    expires_at: float


class KvSource(msgspec.Struct, frozen=True):
    """A decode rank's instructions: pull `handle` from `endpoint` (a CURVE server with
    `server_key`), then continue after `output_token_ids` (already sampled and streamed)."""

    handle: KvHandle
    endpoint: str
    server_key: bytes
    output_token_ids: list[int]
