"""Weight-only quantized kernels: int8 per output channel, int4 in groups along the input.

`quantize_kernel` quantizes a float weight at load (`--quantization`); `prequantized_kernel`
lays out a weight the checkpoint already holds in 4 bits (GGUF Q4_0/Q4_1). The math is in
quantize.py, the kernels in int8.py and int4.py.

Every layer is quantized, the LM head too, but never below int8: measured on SmolLM2-135M
(docs/quantization.md), an int4 head alone moves perplexity by +5.4% and agrees with bf16's
argmax at 84% of positions, an int8 head with int4 elsewhere by +0.2% and 97%, for 10 MiB more
per token (llama.cpp's Q4 files likewise keep the output tensor at 6 bits).
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

LM_HEAD = "lm_head"
HEAD_METHOD = {"int8": "int8", "int4": "int8"}  # what the LM head gets for each --quantization


def quantize_kernel(method: str, weight: torch.Tensor, bias: torch.Tensor | None,
                    layer: str, group_size: int = INT4_GROUP_SIZE,
                    as_asked: bool = False) -> LinearKernel:
    """Quantize a float weight with `method` ('int8' or 'int4') into its device's kernel,
    computing in the weight's dtype. The layer named `lm_head` gets HEAD_METHOD's form unless
    `as_asked`. int4 uses groups of `group_size` inputs, or the largest smaller power of two
    that divides the layer's inputs; a layer with none of at least 8 keeps int8 (logged)."""
    dtype, device = weight.dtype, weight.device
    if layer == LM_HEAD and not as_asked:
        method = HEAD_METHOD.get(method, method)
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
