"""`Linear`: y = x W^T (+ b), computed by a kernel that `prepare_linears` picks after loading."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LinearKernel:
    """One prepared weight and the kernel that multiplies by it.

    `__call__` takes x [..., in_features] in the model's dtype and returns [..., out_features]
    in the same dtype. `name` says what runs (for the start-up log), `nbytes` what a forward
    pass streams from memory."""

    name = "dense"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        raise NotImplementedError


class Linear(nn.Module):
    """A bias-optional linear layer; before `prepare_linears` it is a plain `F.linear`.

    `prequantized` may be set by a loader that read the weight already quantized (a GGUF Q4
    tensor): `prepare_linears` then installs that form instead of quantizing the float weight.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.kernel: LinearKernel | None = None
        self.prequantized = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.kernel(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        kind = self.kernel.name if self.kernel is not None else "unprepared"
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, {kind}"
