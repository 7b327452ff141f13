"""The one-pass CPU ops (model/cpu_ops.py, cpu_kernels/csrc/elementwise.cpp) give eager torch's
results and roundings: RMSNorm with and without the residual added first (bfloat16 bit for bit,
float32 to its last bits), SiLU(gate) * up; and odd shapes are refused."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from bastion.model.cpu_kernels.build import kernels_or_none

KERNELS = kernels_or_none()
pytestmark = pytest.mark.skipif(KERNELS is None, reason="bastion's CPU kernels are not built here")


def _eager_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows,size", [(1, 576), (16, 576), (300, 64), (3, 1)])
def test_rms_norm_with_and_without_the_residual_equals_eager_torch(dtype, rows, size):
    gen = torch.Generator().manual_seed(rows + size)
    x, residual = (torch.randn(rows, size, generator=gen).mul(3).to(dtype) for _ in range(2))
    weight = torch.randn(size, generator=gen).to(dtype)
    out, none = KERNELS.rms_norm(x, weight, 1e-5)
    assert none is None
    normed, total = KERNELS.rms_norm(x, weight, 1e-5, residual)
    want_total = x + residual
    if dtype == torch.bfloat16:  # NOTE: the same roundings: equal bit for bit
        assert torch.equal(out, _eager_norm(x, weight, 1e-5)) and torch.equal(total, want_total)
        assert torch.equal(normed, _eager_norm(want_total, weight, 1e-5))
    else:
        torch.testing.assert_close(out, _eager_norm(x, weight, 1e-5), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(normed, _eager_norm(want_total, weight, 1e-5), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 0), (torch.float32, 1e-6)])
def test_silu_mul_equals_eager_torch(dtype, tolerance):
    x = torch.randn(17, 2 * 1536, generator=torch.Generator().manual_seed(3)).mul(4).to(dtype)
    gate, up = x.chunk(2, dim=-1)
    want = F.silu(gate) * up
    got = KERNELS.silu_mul(x)
    # NOTE: bfloat16: SiLU's exponential differs from torch's in its last float32 bit, which rounds
    # to a different bfloat16 in a handful of values at most
    assert (got.float() - want.float()).abs().gt(want.float().abs() * 0.01 + tolerance).sum() <= (3 if tolerance == 0 else 0)


def test_shapes_that_do_not_fit_are_refused():
    with pytest.raises(RuntimeError, match="weight"):
        KERNELS.rms_norm(torch.zeros(2, 8), torch.zeros(7), 1e-5)
    with pytest.raises(RuntimeError, match="residual"):
        KERNELS.rms_norm(torch.zeros(2, 8), torch.zeros(8), 1e-5, torch.zeros(2, 7))
    with pytest.raises(RuntimeError, match="2I"):
        KERNELS.silu_mul(torch.zeros(2, 7))
