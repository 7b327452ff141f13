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
    decode_mask: torch.Tensor | None = None          # [B, 1, 1, max_blocks * block_size], True = masked
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
        """q [T, H, D], k/v [T, Hkv, D], caches [blocks, block_size, Hkv, D] -> [T, H, D]."""
        raise NotImplementedError


class SdpaPagedBackend(AttentionBackend):
    """PyTorch SDPA over gathered blocks; the same code runs on CPU and CUDA."""

    def forward(self, q, k, v, k_cache, v_cache, scale):
        ctx = get_context()
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, ctx.slot_mapping, k)
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, ctx.slot_mapping, v)
        out = torch.empty_like(q)
        if ctx.num_decodes:
            out[:ctx.num_decodes] = _decode(q[:ctx.num_decodes], k_cache, v_cache, ctx, scale)
        for chunk in ctx.prefills:
            rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
            out[rows] = _prefill(q[rows], k[rows], v[rows], k_cache, v_cache, chunk, scale)
        return out


def _gather(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """[..., blocks] table -> [..., Hkv, blocks * block_size, D] keys or values."""
    blocks = cache[block_table]                       # [..., nb, bs, Hkv, D]
    shape = blocks.shape
    flat = blocks.reshape(*shape[:-4], shape[-4] * shape[-3], shape[-2], shape[-1])
    return flat.transpose(-3, -2)


def _decode(q, k_cache, v_cache, ctx: AttentionContext, scale: float) -> torch.Tensor:
    """One query token per request: grouped-query attention as two batched matmuls."""
    batch, num_heads, head_dim = q.shape
    keys = _gather(k_cache, ctx.decode_block_tables)   # [B, Hkv, L, D]
    values = _gather(v_cache, ctx.decode_block_tables)
    num_kv_heads = keys.shape[1]
    group = num_heads // num_kv_heads
    qg = q.view(batch, num_kv_heads, group, head_dim)
    scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * scale   # [B, Hkv, G, L]
    scores.masked_fill_(ctx.decode_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    return torch.matmul(probs, values).view(batch, num_heads, head_dim)


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
