"""Float kernels: plain `F.linear`, and oneDNN's prepacked bfloat16 GEMM on CPU (where
bastion's own blocked kernel, cpu.py, is not available).

oneDNN's plain bf16 path reorders the weight on every call; prepacked once (the layout
inductor's freezing pass uses), a one-token decode streams the weights at about 87% of this
machine's memory bandwidth instead of about 55%, and larger batches are no slower (measured in
docs/benchmarks.md). float32 stays on `F.linear`: oneDNN's packed float32 path rounds
differently (greedy parity with transformers is part of the contract) and is no faster at M=1.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from bastion.model.cpu_kernels.build import kernels_or_none
from bastion.model.linear.cpu import BlockedKernel, blocked_eligible
from bastion.model.linear.layer import LinearKernel


class DenseKernel(LinearKernel):
    """`F.linear` on the float weight as loaded (CUDA, float32, and the fallback)."""

    name = "dense"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class PackedKernel(LinearKernel):
    """oneDNN's GEMM on a weight reordered once into its blocked layout (CPU, bfloat16)."""

    name = "onednn-packed"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.out_features, self.in_features = weight.shape
        self._nbytes = weight.numel() * weight.element_size()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        self.bias = None if bias is None else bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    @property
    def nbytes(self) -> int:
        return self._nbytes


def packing_available(dtype: torch.dtype, device: torch.device) -> bool:
    """Prepacked oneDNN weights: CPU, bfloat16, oneDNN built in."""
    return device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()


def float_kernel(weight: torch.Tensor, bias: torch.Tensor | None) -> LinearKernel:
    """The fastest float kernel for this weight's dtype and device: bastion's blocked bf16 kernel
    on a CPU with AVX512-BF16, else oneDNN's prepacked GEMM (bfloat16 CPU), else `F.linear`."""
    if blocked_eligible(weight):
        kernels = kernels_or_none()
        if kernels is not None and kernels.uses_dpbf16:
            return BlockedKernel(kernels, weight, bias)
    if packing_available(weight.dtype, weight.device):
        return PackedKernel(weight, bias)
    return DenseKernel(weight, bias)
