"""The in-place CPU attention (model/attention/cpu.py, cpu_kernels/csrc/paged_attention.cpp) gives
what torch's SDPA gives over gathered, masked blocks, for whole steps: decodes of any context
length (1, within one block, across many), a first prefill chunk, a chunk that continues a cached
context, scattered block tables, grouped query heads, head sizes 16 to 128, float32 and bfloat16
(the vdpbf16ps tiles); and tables or lengths out of range are refused."""
from __future__ import annotations

import sys

import pytest
import torch

from bastion.model.attention import AttentionContext, DecodeGroup, PrefillChunk, attention_context
from bastion.model.attention.cpu import CpuPagedBackend, PagedBatch
from bastion.model.attention.sdpa import SdpaPagedBackend
from bastion.model.cpu_kernels.build import kernels_or_none

KERNELS = kernels_or_none()
pytestmark = pytest.mark.skipif(KERNELS is None, reason="bastion's CPU kernels are not built here")
BLOCK, BLOCKS = 16, 800


@pytest.fixture(params=[16, 4, 32], ids=["block16", "block4", "block32"])
def block_size(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "BLOCK", request.param)
    return request.param


def _step(decodes: list[int], prefills: list[tuple[int, int]], seed: int) -> tuple[AttentionContext, int]:
    """A step of decodes (their context lengths, the new token included) and prefill chunks
    ((new tokens, context length)); each sequence on blocks of its own, scattered."""
    order = torch.randperm(BLOCKS, generator=torch.Generator().manual_seed(seed)).tolist()

    def blocks(context: int) -> torch.Tensor:
        return torch.tensor([order.pop() for _ in range(-(-context // BLOCK))])
    ctx = AttentionContext(slot_mapping=torch.empty(0, dtype=torch.long))
    slots, row = [], 0
    if decodes:
        tables = [blocks(c) for c in decodes]
        width = max(len(t) for t in tables)
        padded = torch.stack([torch.nn.functional.pad(t, (0, width - len(t))) for t in tables])
        lens = torch.tensor(decodes)
        ctx.decodes.append(DecodeGroup(0, len(decodes), padded, lens, BLOCK, 0, decodes[0] if len(decodes) == 1 else 0))
        slots += [int(t[(c - 1) // BLOCK]) * BLOCK + (c - 1) % BLOCK for t, c in zip(tables, decodes)]
        row = len(decodes)
    for new, context in prefills:
        table = blocks(context)
        ctx.prefills.append(PrefillChunk(row, new, context, table))
        slots += [int(table[p // BLOCK]) * BLOCK + p % BLOCK for p in range(context - new, context)]
        row += new
    ctx.slot_mapping = torch.tensor(slots, dtype=torch.long)
    return ctx, row


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 4, 32), (8, 2, 128), (6, 1, 16), (16, 2, 64)])
@pytest.mark.parametrize("decodes,prefills", [
    ([1], []), ([37], []), ([1, 16, 17, 5, 64, 200, 3, 129], []), ([300] * 3, []),
    ([], [(40, 40)]), ([], [(23, 70)]), ([5, 90], [(33, 33), (17, 49), (1, 2)])])
def test_in_place_attention_equals_sdpa_over_gathered_blocks(dtype, tolerance, heads, kv_heads, head_dim,
                                                             decodes, prefills, block_size):
    ctx, tokens = _step(decodes, prefills, seed=heads * 31 + head_dim)
    gen = torch.Generator().manual_seed(len(decodes) * 7 + heads)
    caches = [torch.randn(kv_heads, BLOCKS, block_size, head_dim, generator=gen).to(dtype) for _ in range(2)]
    q = torch.randn(tokens, heads, head_dim, generator=gen).to(dtype)
    k = torch.randn(tokens, kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(tokens, kv_heads, head_dim, generator=gen).to(dtype)
    scale = head_dim ** -0.5
    results = []
    for backend in (SdpaPagedBackend(), CpuPagedBackend(KERNELS)):
        k_cache, v_cache = (c.clone() for c in caches)
        with attention_context(ctx):
            results.append(backend.forward(q, k, v, k_cache, v_cache, scale))
    want, got = results[0].float(), results[1]
    assert got.shape == q.shape and got.dtype == dtype
    assert (got.float() - want).abs().max() <= tolerance * want.abs().max()
    # the kernel over the whole step, prefill chunks included (the backend sends float32 chunks to SDPA)
    k_cache, v_cache = (c.clone() for c in caches)
    with attention_context(ctx):
        SdpaPagedBackend().forward(q, k, v, k_cache, v_cache, scale)  # writes the step's keys and values
    batch = PagedBatch.of(ctx)
    whole = KERNELS.paged_attention(q, k_cache, v_cache, batch.block_tables, batch.context_lens,
                                    batch.query_starts, scale)
    assert (whole.float() - want).abs().max() <= tolerance * want.abs().max()


def _call(q, cache, tables, lens, starts):
    return KERNELS.paged_attention(q, cache, cache, torch.tensor(tables), torch.tensor(lens), torch.tensor(starts), 1.0)


def test_tables_and_lengths_out_of_range_are_refused():
    cache, q = torch.zeros(2, 4, 16, 8), torch.zeros(1, 2, 8)
    with pytest.raises(RuntimeError, match="block id is out of range"):
        _call(q, cache, [[7]], [3], [0, 1])
    with pytest.raises(RuntimeError, match="longer than its block table"):
        _call(q, cache, [[1]], [17], [0, 1])
    with pytest.raises(RuntimeError, match="more than its context"):
        _call(torch.zeros(3, 2, 8), cache, [[1]], [2], [0, 3])
    with pytest.raises(RuntimeError, match="cover q's rows"):
        _call(torch.zeros(3, 2, 8), cache, [[1]], [5], [0, 2])
    with pytest.raises(RuntimeError, match="one dtype"):
        _call(q.bfloat16(), cache, [[1]], [3], [0, 1])
