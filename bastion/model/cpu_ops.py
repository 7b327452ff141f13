"""A layer's small ops in one pass each on CPU, with bastion's kernels where they are built:
RMSNorm with the residual add before it, and SiLU(gate) * up (cpu_kernels/csrc/elementwise.cpp);
torch's ops everywhere else (CUDA, float16, no compiler). Both give eager torch's roundings, so
a model computes what it computed before. At 16 decodes of SmolLM2-135M the eager norms took
about 3 ms of a 41 ms step (61 norms of six ops each) and SiLU-and-mul about 1 ms."""
from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from bastion.model.cpu_kernels.build import kernels_or_none

_FAST = (torch.bfloat16, torch.float32)


@functools.cache
def _module():
    """The kernels module or None, looked up once: these ops run ~60 times a step."""
    return kernels_or_none()


def _kernels(x: torch.Tensor):
    return _module() if x.device.type == "cpu" and x.dtype in _FAST else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / rms(x), computed in float32 and rounded to x's dtype before the weight."""
    kernels = _kernels(x)
    if kernels is not None and weight.dtype in (x.dtype, torch.float32):
        return kernels.rms_norm(x.contiguous(), weight, eps)[0]
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the residual stream's next norm and its new sum."""
    kernels = _kernels(x)
    if kernels is not None and weight.dtype in (x.dtype, torch.float32) and residual.dtype == x.dtype:
        return kernels.rms_norm(x.contiguous(), weight, eps, residual.contiguous())
    total = x + residual
    return rms_norm(total, weight, eps), total


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate, up] on the last dimension."""
    kernels = _kernels(gate_up)
    if kernels is not None:
        return kernels.silu_mul(gate_up.contiguous())
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
