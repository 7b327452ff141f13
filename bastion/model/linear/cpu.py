"""bastion's own bfloat16 kernel for decode-sized batches on CPUs with AVX512-BF16.

At one row (a lone decode) it streams the weights about 25% faster than oneDNN's prepacked
GEMM (docs/benchmarks.md); up to `MAX_ROWS` rows it stays close to it, and above (prefill
chunks) `F.linear` on the same plain weight is as fast as the prepacked one. The plain weight is
also what the fused one-sequence decode step reads, so the model keeps one copy of each weight.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch.nn import functional as F

from bastion.model.linear.layer import LinearKernel

MAX_ROWS = 64


class CpuSmallBatchKernel(LinearKernel):
    """y = x W^T (+ b): bastion's C++ kernel up to `MAX_ROWS` rows, `F.linear` above."""

    name = "bastion-cpu"

    def __init__(self, kernels: ModuleType, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.kernels = kernels
        self.weight = weight.detach().contiguous()
        self.bias = None if bias is None else bias.detach()
        self.bias32 = None if bias is None else self.bias.float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS or rows == 0:
            return F.linear(x, self.weight, self.bias)
        y = self.kernels.linear(x.reshape(rows, x.shape[-1]).contiguous(), self.weight, self.bias32)
        return y.view(*x.shape[:-1], self.weight.shape[0])

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()
