"""Paged attention on CPU with bastion's kernels: a step's new tokens (every decode and every
prefill chunk) attend in one C++ call per layer that reads their sequences' blocks of the KV
cache in place (`cpu_kernels/csrc/paged_attention.cpp`: no gather into a padded copy, no mask,
each sequence exactly its own context, causal within a chunk; flash-style tiles on `vdpbf16ps`
for bfloat16). At 16 sequences of SmolLM2-135M with 75-522-token contexts the SDPA path's
gathers and padded products took 56 of a decode step's 83 ms (docs/engine.md).

float32 runs the kernel's plain loops: for decodes they beat the gathers, for prefill chunks
torch's flash kernel (on MKL's float32 GEMM) is faster (5.0 against 6.1 ms per layer for a
512-token prompt of SmolLM2's shape), so there prefill chunks keep `SdpaPagedBackend`'s path."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from bastion.model.attention.context import AttentionBackend, AttentionContext, get_context
from bastion.model.attention.sdpa import prefill_chunk

MAX_HEAD_DIM, MAX_GROUP = 256, 8  # what the kernel takes (head size, query heads per KV head)


@dataclass
class PagedBatch:
    """The step's sequences in the kernel's terms: block tables [S, width], context lengths [S]
    and where each one's query rows start [S + 1] (decodes first, then prefill chunks, as the
    step lays its tokens out)."""

    block_tables: torch.Tensor
    context_lens: torch.Tensor
    query_starts: torch.Tensor

    @classmethod
    def of(cls, ctx: AttentionContext, prefills: bool = True) -> "PagedBatch":
        """The step's decodes, and its prefill chunks unless `prefills` is False."""
        chunks = ctx.prefills if prefills else []
        tables = [g.block_tables for g in ctx.decodes] + [c.block_table.view(1, -1) for c in chunks]
        width = max(t.shape[1] for t in tables)
        padded = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tables])
        lens = torch.cat([g.context_lens for g in ctx.decodes] + [torch.tensor([c.context_len]) for c in chunks])
        counts = [1] * sum(g.count for g in ctx.decodes) + [c.query_len for c in chunks]
        starts = torch.zeros(len(counts) + 1, dtype=torch.long)
        starts[1:] = torch.tensor(counts).cumsum(0)
        return cls(padded.contiguous(), lens.to(torch.long).contiguous(), starts)


class CpuPagedBackend(AttentionBackend):
    """Every new token attends in place over its sequence's paged KV (bfloat16 or float32, CPU)."""

    def __init__(self, kernels: ModuleType) -> None:
        self.kernels = kernels
        self._batch: tuple[AttentionContext, PagedBatch] | None = None

    def forward(self, q, k, v, k_cache, v_cache, scale):
        ctx = get_context()
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, ctx.slot_mapping, k.transpose(0, 1))
        v_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, ctx.slot_mapping, v.transpose(0, 1))
        in_place = q.dtype != torch.float32  # NOTE: float32 prefill chunks: SDPA's flash kernel (above)
        if in_place or not ctx.prefills:
            return self._attend(q.contiguous(), k_cache, v_cache, ctx, in_place, scale)
        out = torch.empty_like(q)
        decodes = sum(g.count for g in ctx.decodes)
        if decodes:
            out[:decodes] = self._attend(q[:decodes].contiguous(), k_cache, v_cache, ctx, False, scale)
        for chunk in ctx.prefills:
            rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
            out[rows] = prefill_chunk(q[rows], k[rows], v[rows], k_cache, v_cache, chunk, scale)
        return out

    def _attend(self, q, k_cache, v_cache, ctx: AttentionContext, prefills: bool, scale: float) -> torch.Tensor:
        batch = self.batch_of(ctx, prefills)
        return self.kernels.paged_attention(q, k_cache, v_cache, batch.block_tables, batch.context_lens,
                                            batch.query_starts, scale)

    def batch_of(self, ctx: AttentionContext, prefills: bool = True) -> PagedBatch:
        """The step's `PagedBatch`, made by its first layer and kept for the others."""
        if self._batch is None or self._batch[0] is not ctx:
            self._batch = (ctx, PagedBatch.of(ctx, prefills))
        return self._batch[1]


def cpu_backend_or_none(kernels: ModuleType | None, device: torch.device, dtype: torch.dtype,
                        num_heads: int, num_kv_heads: int, head_dim: int) -> CpuPagedBackend | None:
    """The in-place backend where its kernel takes this model (CPU, bfloat16 or float32, the
    head shapes above), else None."""
    if kernels is None or not hasattr(kernels, "paged_attention") or device.type != "cpu":
        return None
    if dtype not in (torch.bfloat16, torch.float32) or head_dim > MAX_HEAD_DIM:
        return None
    if num_kv_heads < 1 or num_heads % num_kv_heads or num_heads // num_kv_heads > MAX_GROUP:
        return None
    return CpuPagedBackend(kernels)
