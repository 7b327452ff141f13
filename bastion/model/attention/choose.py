"""Which attention backend a model runs (`--attention-backend`): `cpu-paged` (bastion's kernel,
decodes in place over the paged cache) on a CPU where it takes the model, else `torch-sdpa`."""
from __future__ import annotations

import torch

from bastion.model.arch_config import ArchConfig, ModelLoadError
from bastion.model.attention.context import AttentionBackend
from bastion.model.attention.cpu import cpu_backend_or_none
from bastion.model.attention.sdpa import SdpaPagedBackend

BACKENDS = ("auto", "torch-sdpa", "cpu-paged")


def make_backend(name: str, device: torch.device, dtype: torch.dtype, cfg: ArchConfig) -> AttentionBackend:
    """The backend `name` asks for; `auto`: cpu-paged where it can run, else torch-sdpa."""
    if name == "torch-sdpa":
        return SdpaPagedBackend()
    from bastion.model.cpu_kernels.build import kernels_or_none

    kernels = kernels_or_none() if device.type == "cpu" else None
    backend = cpu_backend_or_none(kernels, device, dtype, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    if backend is not None:
        return backend
    if name == "cpu-paged":
        raise ModelLoadError(f"--attention-backend cpu-paged needs bastion's CPU kernels on a CPU, bfloat16 or "
                             f"float32, a head size up to 256 and at most 8 query heads per KV head (here: "
                             f"{device.type}, {str(dtype).removeprefix('torch.')}, head size {cfg.head_dim}, "
                             f"{cfg.num_heads} heads over {cfg.num_kv_heads} KV heads)")
    return SdpaPagedBackend()
