"""`prepare_linears`: give every `Linear` of a loaded model its kernel, quantized or not."""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

from torch import nn

from bastion.model.linear.dense import float_kernel
from bastion.model.linear.layer import Linear, LinearKernel
from bastion.model.linear.quantized import prequantized_kernel, quantize_kernel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearSummary:
    """What `prepare_linears` installed: kernel name -> layer count, and the bytes streamed."""

    kernels: dict[str, int]
    weight_bytes: int
    seconds: float = 0.0

    def describe(self) -> str:
        kinds = ", ".join(f"{count} {name}" for name, count in sorted(self.kernels.items()))
        return (f"linear layers: {kinds}; {self.weight_bytes / 2**20:.1f} MiB of weights per token "
                f"(prepared in {self.seconds:.1f} s)")


def prepare_linears(model: nn.Module, quantization: str | None = None) -> LinearSummary:
    """Install a kernel in every `Linear` of `model` and free float weights nothing else shares.

    `quantization` is None (float kernels), 'int8' or 'int4' (the flag is checked by
    `config/engine.py: ModelConfig`; `quantize_kernel` refuses any other); a layer the loader
    gave a `prequantized` weight (a GGUF Q4 tensor) keeps that form whatever is asked."""
    started = time.perf_counter()
    shared = _shared_weights(model)
    counts: Counter[str] = Counter()
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, Linear):
            continue
        kernel = _kernel_for(name, module, quantization)
        module.kernel, module.prequantized = kernel, None
        if id(module.weight) not in shared:
            module.weight = None  # NOTE: the kernel holds the only copy it needs
        counts[kernel.name] += 1
        total += kernel.nbytes
    summary = LinearSummary(dict(counts), total, time.perf_counter() - started)
    logger.info("%s", summary.describe())
    return summary


def _kernel_for(name: str, module: Linear, quantization: str | None) -> LinearKernel:
    bias = None if module.bias is None else module.bias.detach()
    if module.prequantized is not None:
        return prequantized_kernel(module.prequantized, bias, module.weight.dtype, module.weight.device)
    if quantization is None:
        return float_kernel(module.weight.detach(), bias)
    return quantize_kernel(quantization, module.weight.detach(), bias, layer=name)


def _shared_weights(model: nn.Module) -> set[int]:
    """Parameters registered under more than one module (a tied LM head and embedding)."""
    owners: Counter[int] = Counter()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] += 1
    return {pid for pid, count in owners.items() if count > 1}
