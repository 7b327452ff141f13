"""Weight-only quantized kernels: int8 per output channel, int4 in groups along the input.

`quantize_kernel` quantizes a float weight at load (`--quantization`); `prequantized_kernel`
lays out a weight the checkpoint already holds in 4 bits (GGUF Q4_0/Q4_1). The math is in
quantize.py, the kernels in int8.py and int4.py. Every layer is quantized, the LM head included
(measured in docs/quantization.md: the int4 head costs little against what it saves).
"""
from __future__ import annotations

import logging

import torch

from bastion.model.linear.int4 import Int4Kernel
from bastion.model.linear.int8 import Int8Kernel
from bastion.model.linear.layer import LinearKernel
from bastion.model.linear.quantize import (INT4_GROUP_SIZE, Int4Weight, int4_group_size,
                                           quantize_int4, quantize_int8)

__all__ = ["Int4Weight", "quantize_kernel", "prequantized_kernel"]

logger = logging.getLogger(__name__)


def quantize_kernel(method: str, weight: torch.Tensor, bias: torch.Tensor | None,
                    layer: str, group_size: int = INT4_GROUP_SIZE) -> LinearKernel:
    """Quantize a float weight with `method` ('int8' or 'int4') into its device's kernel,
    computing in the weight's dtype. int4 uses groups of `group_size` inputs, or the largest
    smaller power of two that divides the layer's inputs; a layer with none of at least 8
    keeps int8 (logged)."""
    dtype, device = weight.dtype, weight.device
    if method == "int4":
        group = int4_group_size(weight.shape[1], group_size)
        if group is not None:
            return Int4Kernel(quantize_int4(weight, group), bias, dtype, device)
        logger.info("%s: %d inputs take no int4 group of 8 or more; int8 instead", layer, weight.shape[1])
    elif method != "int8":
        raise ValueError(f"unknown quantization {method!r}: use int8 or int4")
    q, scale = quantize_int8(weight)
    return Int8Kernel(q, scale, bias, dtype)


def prequantized_kernel(weight: Int4Weight, bias: torch.Tensor | None,
                        dtype: torch.dtype, device: torch.device) -> LinearKernel:
    """The kernel for a weight the checkpoint holds quantized, computing in `dtype`."""
    return Int4Kernel(weight, bias, dtype, device)
