"""bastion's own bfloat16 kernel for CPUs with AVX512-BF16, on a blocked weight layout.

The weight is reordered once into [ceil(out / 16), in / 2, 16, 2] (cpu_kernels/csrc/blocked.h):
runs of 16 output columns with their inputs in pairs, the operand layout of `vdpbf16ps`. One
layout serves every batch size, and the fused one-sequence decode step reads it too, so the
model keeps a single copy of each weight. Against oneDNN's prepacked GEMM on SmolLM2-135M's 121
products (docs/engine.md): one row 5.3 vs 7.5 ms, 16 rows 10.2 vs 12.4 ms, 64 rows 24.5 vs
29.4 ms, 512 rows 195 vs 206 ms.
"""
from __future__ import annotations

from types import ModuleType

import torch

from bastion.model.linear.layer import LinearKernel

BLOCK = 16


def pack_blocked(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] -> [ceil(out / 16), in / 2, 16, 2] (rows padded with zeros; `in` must be even)."""
    out_features, in_features = weight.shape
    pad = (-out_features) % BLOCK
    if pad:
        weight = torch.cat([weight, weight.new_zeros(pad, in_features)])
    return weight.view(-1, BLOCK, in_features // 2, 2).permute(0, 2, 1, 3).contiguous()


def blocked_eligible(weight: torch.Tensor) -> bool:
    """bfloat16 on CPU with an even number of inputs."""
    return weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and weight.shape[1] % 2 == 0


class BlockedKernel(LinearKernel):
    """y = x W^T (+ b) on the blocked bfloat16 weight, any number of rows."""

    name = "bastion-cpu"

    def __init__(self, kernels: ModuleType, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.kernels = kernels
        self.out_features, self.in_features = weight.shape
        self.packed = pack_blocked(weight.detach())
        self.bias = None if bias is None else bias.detach()
        self.bias32 = None if bias is None else self.bias.float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        flat = x.reshape(rows, self.in_features).contiguous()
        y = self.kernels.linear_blocked(flat, self.packed, self.out_features, self.bias32)
        return y.view(*x.shape[:-1], self.out_features)

    @property
    def nbytes(self) -> int:
        return self.out_features * self.in_features * 2
