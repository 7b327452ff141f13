"""bastion's C++ CPU kernels against plain torch arithmetic: the small-batch linear layers in
bfloat16 and float32, the int8 one-row product, across ragged shapes (tails of K, N and M)."""
from __future__ import annotations

import pytest
import torch

from bastion.model.cpu_kernels import load_kernels
from bastion.model.linear.quantize import dequantize_int8, quantize_int8

SHAPES = [(1, 7, 50), (3, 13, 100), (4, 960, 576), (5, 64, 1536), (17, 33, 40), (64, 96, 200)]


@pytest.fixture(scope="module")
def kernels():
    return load_kernels()


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("rows,out_features,in_features", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_float32_linear_matches_matmul(kernels, rows, out_features, in_features, with_bias):
    torch.manual_seed(rows * out_features)
    x, w = torch.randn(rows, in_features), torch.randn(out_features, in_features)
    bias = torch.randn(out_features) if with_bias else None
    want = x @ w.t() + (bias if with_bias else 0)
    assert _relative_error(kernels.linear(x, w, bias), want) < 1e-5


@pytest.mark.parametrize("rows,out_features,in_features", SHAPES)
def test_bfloat16_linear_matches_float32_product_of_the_same_values(kernels, rows, out_features, in_features):
    torch.manual_seed(in_features)
    x = torch.randn(rows, in_features).to(torch.bfloat16)
    w = torch.randn(out_features, in_features).to(torch.bfloat16)
    bias = torch.randn(out_features)
    got = kernels.linear(x, w, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, out_features)
    # float32 products of the bf16 values, rounded once to bf16: within bf16's half ulp (0.4%)
    assert _relative_error(got, x.float() @ w.float().t() + bias) < 8e-3


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
    with pytest.raises(RuntimeError, match="x \\[M, K\\] and w \\[N, K\\]"):
        kernels.linear(torch.randn(2, 8), torch.randn(4, 9))
    with pytest.raises(RuntimeError, match="one dtype"):
        kernels.linear(torch.randn(2, 8), torch.randn(4, 8).to(torch.bfloat16))
    with pytest.raises(RuntimeError, match="scale is float32"):
        kernels.linear_int8(torch.randn(1, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(3))
