"""What one step tells its attention layers: the decode groups and prefill chunks of its tokens,
their cache slots and block tables; and the interface every attention backend implements.

Tokens of one step are laid out decodes first (one query token each, in groups of similar
context length), then prefill chunks (one contiguous run per request). The KV of every new token
is written into its cache slot first; then each group attends over its requests' blocks.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class PrefillChunk:
    """A run of `query_len` new tokens of one request whose context is `context_len` long."""

    query_start: int
    query_len: int
    context_len: int
    block_table: torch.Tensor | None  # the request's blocks up to its context (None: not given)

    @property
    def whole_context(self) -> bool:
        """The chunk is its request's whole context (its first chunk): nothing cached before it."""
        return self.query_len == self.context_len


@dataclass
class DecodeGroup:
    """`count` one-token queries from row `start`, their block tables padded to one width."""

    start: int
    count: int
    block_tables: torch.Tensor   # [count, max_blocks]
    context_lens: torch.Tensor   # [count] int64: each row's context, its new token included
    block_size: int
    shared_blocks: int = 0       # leading blocks that every row's table has in common
    context_len: int = 0         # with count 1: its context length (attended unpadded, no mask)
    _mask: torch.Tensor | None = field(default=None, repr=False)

    def padding_mask(self) -> torch.Tensor | None:
        """[1, count, 1, max_blocks * block_size]: 0 up to each row's context, -inf after it
        (None for count 1); made on first use (a backend that reads the blocks in place needs none)."""
        if self.count == 1:
            return None
        if self._mask is None:
            span = torch.arange(self.block_tables.shape[1] * self.block_size, device=self.block_tables.device)
            padding = span[None, :] >= self.context_lens[:, None]
            mask = torch.zeros(padding.shape, device=padding.device).masked_fill_(padding, float("-inf"))
            self._mask = mask.view(1, self.count, 1, -1)
        return self._mask


@dataclass
class AttentionContext:
    """What attention layers need to know about the current step."""

    slot_mapping: torch.Tensor                      # [T] flat cache slot of each new token
    decodes: list[DecodeGroup] = field(default_factory=list)
    prefills: list[PrefillChunk] = field(default_factory=list)


_CONTEXT: AttentionContext | None = None


@contextmanager
def attention_context(ctx: AttentionContext):
    """Make `ctx` visible to every attention layer for the duration of one forward pass."""
    global _CONTEXT
    _CONTEXT = ctx
    try:
        yield ctx
    finally:
        _CONTEXT = None


def current_context() -> AttentionContext | None:
    """The step's context, or None outside `attention_context()`."""
    return _CONTEXT


def get_context() -> AttentionContext:
    assert _CONTEXT is not None, "attention called outside attention_context()"
    return _CONTEXT


class AttentionBackend:
    """Computes attention for new tokens over their requests' paged KV."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D], caches [Hkv, blocks, block_size, D] -> [T, H, D]."""
        raise NotImplementedError
