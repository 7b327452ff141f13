"""The in-place CPU decode attention (model/attention/cpu.py, cpu_kernels/csrc/paged_attention.cpp)
gives what torch's SDPA gives over the gathered, masked blocks: any context length (1, within one
block, across many), shuffled block tables, grouped query heads, float32 and bfloat16; and a table
that names a block outside the pool, or a context longer than its table, is refused."""
from __future__ import annotations

import pytest
import torch

from bastion.model.attention import DecodeGroup
from bastion.model.attention.cpu import CpuPagedBackend
from bastion.model.attention.sdpa import SdpaPagedBackend
from bastion.model.cpu_kernels.build import kernels_or_none

KERNELS = kernels_or_none()
pytestmark = pytest.mark.skipif(KERNELS is None, reason="bastion's CPU kernels are not built here")


def _group(contexts: list[int], block_size: int, blocks: int, seed: int) -> DecodeGroup:
    gen = torch.Generator().manual_seed(seed)
    width = max(-(-c // block_size) for c in contexts)
    order = torch.randperm(blocks, generator=gen)  # NOTE: scattered blocks, shared by no two rows
    tables = order[:len(contexts) * width].view(len(contexts), width).contiguous()
    lens = torch.tensor(contexts, dtype=torch.long)
    return DecodeGroup(0, len(contexts), tables, lens, block_size, 0, contexts[0] if len(contexts) == 1 else 0)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 4, 32), (8, 2, 128), (6, 1, 16)])
@pytest.mark.parametrize("contexts", [[1], [37], [1, 16, 17, 5, 64, 200, 3, 129], [300] * 3])
def test_in_place_decode_attention_equals_sdpa_over_gathered_blocks(dtype, tolerance, heads, kv_heads,
                                                                    head_dim, contexts):
    block_size, blocks = 16, 160
    gen = torch.Generator().manual_seed(len(contexts) * 7 + heads)
    k_cache = torch.randn(kv_heads, blocks, block_size, head_dim, generator=gen).to(dtype)
    v_cache = torch.randn(kv_heads, blocks, block_size, head_dim, generator=gen).to(dtype)
    q = torch.randn(len(contexts), heads, head_dim, generator=gen).to(dtype)
    group = _group(contexts, block_size, blocks, seed=heads)
    scale = head_dim ** -0.5
    want = SdpaPagedBackend().decode(q, k_cache, v_cache, group, scale).float()
    got = CpuPagedBackend(KERNELS).decode(q, k_cache, v_cache, group, scale)
    assert got.shape == q.shape and got.dtype == dtype
    assert (got.float() - want).abs().max() <= tolerance * want.abs().max()


def test_tables_and_contexts_out_of_range_are_refused():
    k_cache = torch.zeros(2, 4, 16, 8)
    q = torch.zeros(1, 2, 8)
    with pytest.raises(RuntimeError, match="block id is out of range"):
        KERNELS.paged_decode_attention(q, k_cache, k_cache, torch.tensor([[7]]), torch.tensor([3]), 1.0)
    with pytest.raises(RuntimeError, match="longer than its block table"):
        KERNELS.paged_decode_attention(q, k_cache, k_cache, torch.tensor([[1]]), torch.tensor([17]), 1.0)
    with pytest.raises(RuntimeError, match="one dtype"):
        KERNELS.paged_decode_attention(q.bfloat16(), k_cache, k_cache, torch.tensor([[1]]), torch.tensor([3]), 1.0)
