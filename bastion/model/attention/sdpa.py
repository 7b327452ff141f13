"""Paged attention with torch's SDPA: each decode group's blocks gathered into one padded
tensor and masked, each prefill chunk causal over its context (CPU and CUDA)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from bastion.model.attention.context import AttentionBackend, DecodeGroup, PrefillChunk, get_context


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
        if len(ctx.decodes) == 1 and not ctx.prefills:  # NOTE: the decode-only step: no copy
            return self.decode(q, k_cache, v_cache, ctx.decodes[0], scale)
        out = torch.empty_like(q)
        for group in ctx.decodes:
            rows = slice(group.start, group.start + group.count)
            out[rows] = self.decode(q[rows], k_cache, v_cache, group, scale)
        for chunk in ctx.prefills:
            rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
            out[rows] = prefill_chunk(q[rows], k[rows], v[rows], k_cache, v_cache, chunk, scale)
        return out

    def decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: DecodeGroup,
               scale: float) -> torch.Tensor:
        """One decode group's attention: q [count, H, D] -> [count, H, D]."""
        return _decode(q, k_cache, v_cache, group, scale)


def _gather(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Blocks `block_ids` (flat) of one layer's cache as [Hkv, len(block_ids) * block_size, D]."""
    num_kv_heads, _, block_size, head_dim = cache.shape
    return cache.index_select(1, block_ids).view(num_kv_heads, -1, head_dim)


def _decode(q, k_cache, v_cache, group: DecodeGroup, scale: float) -> torch.Tensor:
    """One query token per request, the group's requests in one SDPA call over (Hkv, B)."""
    if group.shared_blocks:
        return _decode_shared_prefix(q, k_cache, v_cache, group, scale)
    if group.count == 1 and group.context_len:
        return _decode_one(q, k_cache, v_cache, group, scale)
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[0]
    flat = group.block_tables.reshape(-1)
    keys = _gather(k_cache, flat).view(num_kv_heads, batch, -1, head_dim)     # [Hkv, B, L, D]
    values = _gather(v_cache, flat).view(num_kv_heads, batch, -1, head_dim)
    qg = q.view(batch, num_kv_heads, -1, head_dim).transpose(0, 1)         # [Hkv, B, G, D]
    out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=group.padding_mask().to(q.dtype),
                                         scale=scale)
    return out.transpose(0, 1).reshape(batch, num_heads, head_dim)


def _decode_one(q, k_cache, v_cache, group: DecodeGroup, scale: float) -> torch.Tensor:
    """One request alone: its keys cut to its context length, so SDPA needs no mask."""
    _, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[0]
    table = group.block_tables[0]
    keys = _gather(k_cache, table)[:, :group.context_len]                      # [Hkv, L, D]
    values = _gather(v_cache, table)[:, :group.context_len]
    qg = q.view(1, num_kv_heads, -1, head_dim)                                 # [1, Hkv, G, D]
    out = F.scaled_dot_product_attention(qg, keys.unsqueeze(0), values.unsqueeze(0), scale=scale)
    return out.reshape(1, num_heads, head_dim)


def _decode_shared_prefix(q, k_cache, v_cache, group: DecodeGroup, scale: float) -> torch.Tensor:
    """Decodes whose requests share leading KV blocks: the shared keys are gathered once and
    met by all queries in one matrix product; only each request's own tail is gathered per row.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[0]
    group_size = num_heads // num_kv_heads
    tables = group.block_tables
    shared_k = _gather(k_cache, tables[0, :group.shared_blocks])            # [Hkv, P, D]
    shared_v = _gather(v_cache, tables[0, :group.shared_blocks])
    own = tables[:, group.shared_blocks:].reshape(-1)
    own_k = _gather(k_cache, own).view(num_kv_heads, batch, -1, head_dim)   # [Hkv, B, S, D]
    own_v = _gather(v_cache, own).view(num_kv_heads, batch, -1, head_dim)
    qg = q.view(batch, num_kv_heads, group_size, head_dim).transpose(0, 1)  # [Hkv, B, G, D]
    rows = qg.reshape(num_kv_heads, batch * group_size, head_dim)
    shared_scores = torch.matmul(rows, shared_k.transpose(-1, -2))
    scores = torch.cat([shared_scores.view(num_kv_heads, batch, group_size, -1),
                        torch.matmul(qg, own_k.transpose(-1, -2))], dim=-1).float()
    probs = torch.softmax(scores.mul_(scale).add_(group.padding_mask()), dim=-1).to(q.dtype)
    prefix_len = shared_k.shape[1]
    shared_part = torch.matmul(
        probs[..., :prefix_len].reshape(num_kv_heads, batch * group_size, prefix_len), shared_v)
    out = shared_part.view(num_kv_heads, batch, group_size, head_dim) + torch.matmul(
        probs[..., prefix_len:], own_v)
    return out.transpose(0, 1).reshape(batch, num_heads, head_dim)


def prefill_chunk(q, k, v, k_cache, v_cache, chunk: PrefillChunk, scale: float) -> torch.Tensor:
    """A run of new tokens of one request, causal over its whole context."""
    qh = q.transpose(0, 1).unsqueeze(0)                   # [1, H, n, D]
    if chunk.whole_context or chunk.block_table is None:
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
