"""Paged attention on CPU with bastion's kernels: each decode group attends in one C++ call that
reads its blocks of the KV cache in place (`cpu_kernels/csrc/paged_attention.cpp`: no gather
into a padded copy, no mask, each sequence exactly its own context); prefill chunks as
`SdpaPagedBackend`. At 16 sequences of SmolLM2-135M with 75-520-token contexts, the SDPA path's
gathers and padded products took 56 of a decode step's 83 ms (docs/engine.md)."""
from __future__ import annotations

from types import ModuleType

import torch

from bastion.model.attention.context import DecodeGroup
from bastion.model.attention.sdpa import SdpaPagedBackend

MAX_HEAD_DIM, MAX_GROUP = 512, 8  # what the kernel takes (head size, query heads per KV head)


class CpuPagedBackend(SdpaPagedBackend):
    """Decodes in place over the paged cache (bfloat16 or float32 on CPU); the rest as SDPA."""

    def __init__(self, kernels: ModuleType) -> None:
        self.kernels = kernels

    def decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, group: DecodeGroup,
               scale: float) -> torch.Tensor:
        return self.kernels.paged_decode_attention(q.contiguous(), k_cache, v_cache, group.block_tables,
                                                   group.context_lens, scale)


def cpu_backend_or_none(kernels: ModuleType | None, device: torch.device, dtype: torch.dtype,
                        num_heads: int, num_kv_heads: int, head_dim: int) -> CpuPagedBackend | None:
    """The in-place backend where its kernel takes this model (CPU, bfloat16 or float32, the
    head shapes above), else None."""
    if kernels is None or not hasattr(kernels, "paged_decode_attention") or device.type != "cpu":
        return None
    if dtype not in (torch.bfloat16, torch.float32) or head_dim > MAX_HEAD_DIM:
        return None
    if num_kv_heads < 1 or num_heads % num_kv_heads or num_heads // num_kv_heads > MAX_GROUP:
        return None
    return CpuPagedBackend(kernels)
