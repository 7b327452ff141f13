"""Int8 weight-only kernels: one scale per output channel, activations in the model's dtype.

CPU: torch's `_weight_int8pack_mm` (AVX-512 GEMV reading the int8 weight directly; x must be 2D
and the scales in x's dtype) for the few-row products of decode. It has no fast path for many
rows (a 256-token prefill through SmolLM2's LM head: ~3x slower than the cast below in bf16,
~15x in float32; measured on a loaded 2-core machine), so larger products, CUDA, and a torch
without the op cast the weight to the model's dtype per call and scale after the product.
In torch 2.13 its bfloat16 path reads past the row when in_features % 16 != 0 (wrong numbers
or a segfault; float32 and float16 are fine): such layers take the cast path too.
A single bfloat16 row on a CPU with AVX512-VNNI takes bastion's own kernel (cpu_kernels: the
weight widened to int16 against the activation held as int16, finer than its bfloat16 input).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from bastion.model.cpu_kernels.build import kernels_or_none
from bastion.model.linear.layer import LinearKernel


PACK_MAX_ROWS = {torch.bfloat16: 16, torch.float16: 16, torch.float32: 1}


def _own_kernels(device: torch.device, dtype: torch.dtype):
    """bastion's CPU kernels when they have the VNNI int8 path (bfloat16 activations), else None."""
    if device.type != "cpu" or dtype != torch.bfloat16:
        return None
    kernels = kernels_or_none()
    return kernels if kernels is not None and kernels.uses_vnni else None


def int8pack_available(device: torch.device, dtype: torch.dtype, in_features: int) -> bool:
    """torch's CPU int8 weight-only GEMM is present and safe for this shape."""
    return (device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int8pack_mm")
            and (dtype != torch.bfloat16 or in_features % 16 == 0))


class Int8Kernel(LinearKernel):
    """y = (x q^T) * scale + bias with q int8 [out, in] and scale [out]."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype) -> None:
        self.q = q.contiguous()
        self.scale = scale.to(dtype)
        self.bias = None if bias is None else bias.to(dtype)
        self.out_features = q.shape[0]
        self.pack_rows = PACK_MAX_ROWS.get(dtype, 0) if int8pack_available(q.device, dtype, q.shape[1]) else 0
        self.name = "int8-cpu" if self.pack_rows else f"int8-{q.device.type}-cast"
        # NOTE: one row (a lone decode): bastion's VNNI kernel where the CPU has it (cpu_kernels)
        self.own = _own_kernels(q.device, dtype)
        self.scale32 = scale.float().contiguous()
        self.bias32 = None if bias is None else bias.float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.own is not None and x.numel() == x.shape[-1]:
            y = self.own.linear_int8(x.reshape(1, -1).contiguous(), self.q, self.scale32, self.bias32)
            return y.view(*x.shape[:-1], self.out_features)
        if self.pack_rows and x.numel() <= self.pack_rows * x.shape[-1]:
            flat = x.reshape(-1, x.shape[-1]).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(flat, self.q, self.scale)
            y = y.view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.q.to(x.dtype)) * self.scale
        return y if self.bias is None else y + self.bias

    @property
    def nbytes(self) -> int:
        extra = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.q.numel() + self.scale.numel() * self.scale.element_size() + extra
