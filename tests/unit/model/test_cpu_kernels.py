"""bastion's C++ CPU kernels against plain torch arithmetic: the blocked bfloat16 linear layers
and the int8 product, across ragged shapes (tails of K, N and M)."""
from __future__ import annotations

import pytest
import torch

from bastion.model.cpu_kernels import load_kernels
from bastion.model.linear.cpu import BlockedKernel, pack_blocked
from bastion.model.linear.quantize import dequantize_int8, quantize_int8

SHAPES = [(1, 7, 50), (3, 13, 100), (4, 960, 576), (5, 64, 1536), (17, 33, 40), (64, 96, 200), (203, 40, 64)]


@pytest.fixture(scope="module")
def kernels():
    return load_kernels()


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("rows,out_features,in_features", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_blocked_bfloat16_linear_matches_float32_product_of_the_same_values(
        kernels, rows, out_features, in_features, with_bias):
    torch.manual_seed(in_features + rows)
    x = torch.randn(rows, in_features).to(torch.bfloat16)
    w = torch.randn(out_features, in_features).to(torch.bfloat16)
    bias = torch.randn(out_features) if with_bias else None
    got = kernels.linear_blocked(x, pack_blocked(w), out_features, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, out_features)
    # float32 products of the bf16 values, rounded once to bf16: within bf16's half ulp (0.4%)
    want = x.float() @ w.float().t() + (bias if with_bias else 0)
    assert _relative_error(got, want) < 8e-3


def test_blocked_layout_puts_sixteen_columns_of_input_pairs_side_by_side():
    w = torch.arange(20 * 6, dtype=torch.float32).view(20, 6).to(torch.bfloat16)
    packed = pack_blocked(w)
    assert packed.shape == (2, 3, 16, 2)
    assert packed[1, 2, 3].tolist() == w[16 + 3, 4:6].tolist()
    assert packed[1, :, 4:].abs().sum() == 0   # rows 20..31 are padding


def test_blocked_kernel_takes_any_leading_shape(kernels):
    w = torch.randn(48, 64).to(torch.bfloat16)
    kernel = BlockedKernel(kernels, w, None)
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    assert kernel(x).shape == (2, 3, 48)
    assert _relative_error(kernel(x), x.float() @ w.float().t()) < 8e-3


@pytest.mark.parametrize("rows,out_features,in_features", [(1, 7, 50), (1, 960, 576), (1, 13, 100), (3, 64, 130)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_matches_dequantized_weight(kernels, rows, out_features, in_features, dtype):
    torch.manual_seed(out_features)
    q, scale = quantize_int8(torch.randn(out_features, in_features))
    x = torch.randn(rows, in_features).to(dtype)
    bias = torch.randn(out_features)
    want = x.float() @ dequantize_int8(q, scale).float().t() + bias
    got = kernels.linear_int8(x, q.contiguous(), scale.float().contiguous(), bias)
    assert got.dtype == dtype
    # float32 stays float32; bfloat16 rows go as int16 per 64 values (finer than bfloat16)
    assert _relative_error(got, want) < (1e-5 if dtype == torch.float32 else 8e-3)


def test_bad_arguments_are_refused_with_a_message(kernels):
    w = pack_blocked(torch.randn(4, 8).to(torch.bfloat16))
    with pytest.raises(RuntimeError, match="weight is bfloat16 \\[ceil\\(N / 16\\), K / 2, 16, 2\\]"):
        kernels.linear_blocked(torch.randn(2, 10).to(torch.bfloat16), w, 4)
    with pytest.raises(RuntimeError, match="x is contiguous bfloat16"):
        kernels.linear_blocked(torch.randn(2, 8), w, 4)
    with pytest.raises(RuntimeError, match="scale is float32"):
        kernels.linear_int8(torch.randn(1, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(3))
