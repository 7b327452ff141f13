"""Weight-only quantized kernels: int8 per output channel, int4 in groups along the input.

PLACEHOLDER (issue 17 foundation): the interface below is fixed; the kernels are being written.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion.model.linear.layer import LinearKernel


@dataclass
class Int4Weight:
    """A weight already quantized to 4 bits by whoever wrote the checkpoint (GGUF Q4_0/Q4_1):
    w[o, i] = q[o, i] * scale[o, i // group_size] + minimum[o, i // group_size].

    q: uint8 [out, in] holding 0..15; scale, minimum: float32 [out, in // group_size]."""

    q: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor
    group_size: int

    @classmethod
    def empty(cls, out_features: int, in_features: int, group_size: int) -> "Int4Weight":
        groups = in_features // group_size
        return cls(torch.empty(out_features, in_features, dtype=torch.uint8),
                   torch.empty(out_features, groups), torch.empty(out_features, groups), group_size)

    def rows(self, start: int, count: int) -> "Int4Weight":
        """A view of output rows [start, start + count), to fill one part of a merged layer."""
        return Int4Weight(self.q.narrow(0, start, count), self.scale.narrow(0, start, count),
                          self.minimum.narrow(0, start, count), self.group_size)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight these numbers stand for (the reference the kernels are tested on)."""
        groups = self.scale.shape[1]
        q = self.q.float().view(self.q.shape[0], groups, self.group_size)
        return (q * self.scale[..., None] + self.minimum[..., None]).view(self.q.shape)


def quantize_kernel(method: str, weight: torch.Tensor, bias: torch.Tensor | None,
                    layer: str) -> LinearKernel:
    """Quantize a float weight with `method` ('int8' or 'int4') into its device's kernel."""
    raise NotImplementedError(method)


def prequantized_kernel(weight: Int4Weight, bias: torch.Tensor | None,
                        dtype: torch.dtype, device: torch.device) -> LinearKernel:
    """The kernel for a weight the checkpoint holds quantized, computing in `dtype`."""
    # TEMPORARY (branch gguf, to test GGUF loading until the quant branch's int4 kernel lands;
    # resolve the merge in favour of the quant branch): widen and run the float kernel.
    from bastion.model.linear.dense import float_kernel
    return float_kernel(weight.dequantize().to(device=device, dtype=dtype), bias)
