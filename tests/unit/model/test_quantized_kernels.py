"""Each quantized kernel against F.linear on its dequantized weight; the quantization math's
error bounds; `Int4Weight` -> `prequantized_kernel`."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from bastion.config.engine import EngineConfig
from bastion.model.linear.quantize import (dequantize_int8, int4_group_size, quantize_int4,
                                           quantize_int8)
from bastion.model.linear.quantized import Int4Weight, prequantized_kernel, quantize_kernel

# (out, in): packable; out not a multiple of 16 (int4 falls back); in of 688 (groups of 16,
# the demo model's down_proj); in of 48 (groups of 16); in of 36 (no int4 group: int8)
SHAPES = [(64, 64), (96, 256), (60, 64), (32, 688), (100, 48), (16, 36)]
DTYPES = [torch.float32, torch.bfloat16]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # of the output's largest magnitude


def reference_weight(method: str, weight: torch.Tensor) -> torch.Tensor:
    group = int4_group_size(weight.shape[1])
    if method == "int4" and group is not None:
        return quantize_int4(weight, group).dequantize()
    return dequantize_int8(*quantize_int8(weight))


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype and got.shape == want.shape
    err = (got.float() - want).abs().max() / want.abs().max()
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_matches_dequantized_reference(method, shape, dtype, bias):
    torch.manual_seed(hash((method, shape, bias)) % 1000)
    out_features, in_features = shape
    weight = torch.randn(shape).to(dtype)
    b = torch.randn(out_features).to(dtype) if bias else None
    kernel = quantize_kernel(method, weight, b, layer="test")
    ref_w = reference_weight(method, weight)
    ref_b = None if b is None else b.float()
    for x_shape in [(in_features,), (1, in_features), (3, in_features), (2, 5, in_features),
                    (40, in_features)]:
        x = torch.randn(x_shape).to(dtype)
        assert_close(kernel(x), F.linear(x.float(), ref_w, ref_b), dtype)


def test_kernel_names_and_bytes():
    weight = torch.randn(64, 256, dtype=torch.bfloat16)
    int8 = quantize_kernel("int8", weight, None, layer="x")
    int4 = quantize_kernel("int4", weight, None, layer="x")
    assert int8.name == "int8-cpu" and int4.name == "int4-g32-cpu"
    assert int8.nbytes == 64 * 256 + 64 * 2                      # int8 + a bf16 scale per row
    assert int4.nbytes == 64 * 256 // 2 + 256 // 32 * 64 * 2 * 2  # nibbles + bf16 scale/zero pairs
    fallback = quantize_kernel("int4", torch.randn(32, 688), None, layer="x")
    assert fallback.name == "int4-g16-dequant"
    assert fallback.nbytes == 32 * 688 // 2 + 2 * 32 * 43 * 4
    assert quantize_kernel("int4", torch.randn(16, 36), None, layer="x").name == "int8-cpu"
    # torch's bf16 int8 GEMV misreads rows whose length is not a multiple of 16
    assert quantize_kernel("int8", torch.randn(16, 36, dtype=torch.bfloat16), None, layer="x").name == "int8-cpu-cast"


def test_int8_error_bound():
    weight = torch.randn(50, 300) * torch.rand(50, 1) * 4
    q, scale = quantize_int8(weight)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (50,)
    err = (dequantize_int8(q, scale) - weight).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-5)).all()
    assert (q.abs().amax(dim=1) == 127).all()  # the range is used to its end


@pytest.mark.parametrize("group", [16, 32, 64, 128])
def test_int4_error_bound(group):
    weight = torch.randn(40, 256) + torch.randn(40, 1)  # rows off-centre: asymmetry matters
    packed = quantize_int4(weight, group)
    assert packed.q.dtype == torch.uint8 and packed.q.max() <= 15
    assert packed.scale.shape == packed.minimum.shape == (40, 256 // group)
    err = (packed.dequantize() - weight).abs().view(40, -1, group)
    assert (err <= packed.scale[..., None] / 2 + 1e-6).all()
    assert torch.equal(packed.q.view(40, -1, group).amin(dim=2), torch.zeros(40, 256 // group, dtype=torch.uint8))
    assert torch.equal(packed.q.view(40, -1, group).amax(dim=2), torch.full((40, 256 // group), 15, dtype=torch.uint8))


def test_quantization_keeps_zero_rows_and_constant_groups():
    weight = torch.zeros(16, 64)
    weight[1] = 0.5
    assert torch.equal(dequantize_int8(*quantize_int8(weight)), weight)
    assert torch.equal(quantize_int4(weight).dequantize(), weight)


@pytest.mark.parametrize("shape,group", [((64, 128), 32), ((48, 64), 32), ((32, 256), 64), ((20, 96), 32)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_prequantized_kernel_matches_dequantize(shape, group, dtype, bias):
    """A checkpoint's 4-bit weight (GGUF Q4_0 style: minimum = -8 * scale) filled row part by
    row part, as a loader fills a merged layer."""
    torch.manual_seed(3)
    out_features, in_features = shape
    weight = Int4Weight.empty(out_features, in_features, group)
    half = out_features // 2
    for start, count in [(0, half), (half, out_features - half)]:
        part = weight.rows(start, count)
        part.q.copy_(torch.randint(0, 16, (count, in_features), dtype=torch.uint8))
        part.scale.copy_(torch.rand(count, in_features // group) / 10)
        part.minimum.copy_(-8 * part.scale)
    b = torch.randn(out_features).to(dtype) if bias else None
    kernel = prequantized_kernel(weight, b, dtype, torch.device("cpu"))
    x = torch.randn(3, 4, in_features).to(dtype)
    want = F.linear(x.float(), weight.dequantize(), None if b is None else b.float())
    assert_close(kernel(x), want, dtype)


def test_bad_quantization_is_a_clear_error():
    with pytest.raises(ValueError, match="--quantization must be one of int8, int4, got 'int3'"):
        EngineConfig.from_kwargs("model", quantization="int3")
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        quantize_kernel("int3", torch.randn(4, 4), None, layer="x")
