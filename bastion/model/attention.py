"""Paged attention: the per-step context, the backend interface and the torch SDPA backend.

Tokens of one step are laid out decodes first (one query token each, batched together), then
prefill chunks (one contiguous run per request). The KV of every new token is written into its
cache slot first; then each group attends over its request's blocks.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F


@dataclass
class PrefillChunk:
    """A run of `query_len` new tokens of one request whose context is `context_len` long."""

    query_start: int
    query_len: int
    context_len: int
    block_table: torch.Tensor | None  # None when the chunk is the whole context (no gather)


@dataclass
class AttentionContext:
    """What attention layers need to know about the current step."""

    slot_mapping: torch.Tensor                      # [T] flat cache slot of each new token
    num_decodes: int = 0
    decode_block_tables: torch.Tensor | None = None  # [B, max_blocks]
    decode_mask: torch.Tensor | None = None          # [1, B, 1, max_blocks * block_size], 0 or -inf
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


def get_context() -> AttentionContext:
    assert _CONTEXT is not None, "attention called outside attention_context()"
    return _CONTEXT


class AttentionBackend:
    """Computes attention for new tokens over their requests' paged KV."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D], caches [Hkv, blocks, block_size, D] -> [T, H, D]."""
        raise NotImplementedError


class SdpaPagedBackend(AttentionBackend):
    """PyTorch SDPA (and two batched matmuls for decodes) over gathered blocks; CPU and CUDA.

    NOTE: the cache layout is [Hkv, blocks, block_size, D] so that gathering a request's
    blocks with one `index_select` yields per-head contiguous [L, D] keys, ready for matmul.
    """

    def forward(self, q, k, v, k_cache, v_cache, scale):
        ctx = get_context()
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, ctx.slot_mapping, k.transpose(0, 1))
        v_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, ctx.slot_mapping, v.transpose(0, 1))
        out = torch.empty_like(q)
        if ctx.num_decodes:
            out[:ctx.num_decodes] = _decode(q[:ctx.num_decodes], k_cache, v_cache, ctx, scale)
        for chunk in ctx.prefills:
            rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
            out[rows] = _prefill(q[rows], k[rows], v[rows], k_cache, v_cache, chunk, scale)
        return out


def _gather(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Blocks `block_ids` (flat) of one layer's cache as [Hkv, len(block_ids) * block_size, D]."""
    num_kv_heads, _, block_size, head_dim = cache.shape
    return cache.index_select(1, block_ids).view(num_kv_heads, -1, head_dim)


def _decode(q, k_cache, v_cache, ctx: AttentionContext, scale: float) -> torch.Tensor:
    """One query token per request, all requests in one SDPA call batched over (Hkv, B)."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[0]
    flat = ctx.decode_block_tables.reshape(-1)
    keys = _gather(k_cache, flat).view(num_kv_heads, batch, -1, head_dim)     # [Hkv, B, L, D]
    values = _gather(v_cache, flat).view(num_kv_heads, batch, -1, head_dim)
    qg = q.view(batch, num_kv_heads, -1, head_dim).transpose(0, 1)         # [Hkv, B, G, D]
    out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=ctx.decode_mask.to(q.dtype),
                                         scale=scale)
    return out.transpose(0, 1).reshape(batch, num_heads, head_dim)


def _prefill(q, k, v, k_cache, v_cache, chunk: PrefillChunk, scale: float) -> torch.Tensor:
    """A run of new tokens of one request, causal over its whole context."""
    qh = q.transpose(0, 1).unsqueeze(0)                   # [1, H, n, D]
    if chunk.block_table is None:
        keys, values = k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(qh, keys, values, is_causal=True, scale=scale,
                                             enable_gqa=True)
    else:
        keys = _gather(k_cache, chunk.block_table)[:, :chunk.context_len].unsqueeze(0)
        values = _gather(v_cache, chunk.block_table)[:, :chunk.context_len].unsqueeze(0)
        offset = chunk.context_len - chunk.query_len
        q_pos = torch.arange(chunk.query_len, device=q.device).unsqueeze(1) + offset
        k_pos = torch.arange(chunk.context_len, device=q.device).unsqueeze(0)
        out = F.scaled_dot_product_attention(qh, keys, values, attn_mask=k_pos <= q_pos,
                                             scale=scale, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)
