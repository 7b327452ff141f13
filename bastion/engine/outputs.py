"""What the engine reports each step: one token delta per sequence, sent over the wire as is.

A leaf of pure data types (no bastion imports but the handle type, another leaf), so `transport.messages` can name them in its
message union without the wire depending on the engine's machinery. The engine creates these in
its step; the engine process sends them unchanged; the API server reads them from the wire.
"""
from __future__ import annotations

import enum

import msgspec

from bastion.engine.disagg.handle import KvHandle


class FinishReason(enum.StrEnum):
    """Why a sequence ended; msgspec sends the value, so the wire carries "stop", "length", "abort"."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    """Log-probability of a chosen token, its rank, and the top alternatives at that position."""

    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float]] = []


class TokenDelta(msgspec.Struct, frozen=True, array_like=True):
    """What one step added to one of a request's sequences (`index` tells the n>1 siblings apart).

    `num_cached_tokens` is the prompt tokens served from the prefix cache on first admission.
    `kv_handle` (a prefill rank's first token): the request continues on a decode rank, which
    pulls the prompt's KV named by it. `prompt_logprobs` (a request that asked, on its first
    sequence's first delta): one entry per prompt token, None for the first.
    """

    request_id: str
    index: int
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprob] = []
    finish_reason: FinishReason | None = None
    num_cached_tokens: int = 0
    kv_handle: KvHandle | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # NOTE: last: older peers ignore it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
