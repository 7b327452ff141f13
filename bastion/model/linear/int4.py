"""Int4 weight-only kernels: an `Int4Weight` (groups along the input) laid out for its device.

torch's tinygemm-style kernels compute w = (q - 8) * scale + zero per group, so an `Int4Weight`
(w = q * scale + minimum) is handed over as zero = minimum + 8 * scale, both in x's dtype.
- CPU `_weight_int4pack_mm_for_cpu`: bf16/fp16 activations; out_features % 16 == 0 and
  group size 32, 64, 128 or 256 (which then divides in_features). It takes float32 too, but
  through a slow path (SmolLM2's LM head: ~6x dense at one token, ~35x at 256; measured on a
  loaded 2-core machine), so float32 takes the fallback below.
- CUDA `_weight_int4pack_mm`: bf16 activations on sm80+; out_features % 8 == 0,
  in_features % 32 == 0, same group sizes. Written from torch's contract, untested on hardware.
- Anything else (the demo model's 688-input down_proj, float32): the nibbles stay packed two to
  a byte and each call widens them to float32, then the dtype, before `F.linear`.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from bastion.model.linear.layer import LinearKernel
from bastion.model.linear.quantize import Int4Weight

TINYGEMM_GROUPS = (32, 64, 128, 256)


def _scales_and_zeros(weight: Int4Weight, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[in // group, out, 2]: (scale, minimum + 8 * scale) per group, as the kernels want it."""
    scale, minimum = weight.scale.float(), weight.minimum.float()
    pairs = torch.stack([scale, minimum + 8.0 * scale], dim=2)  # [out, groups, 2]
    return pairs.transpose(0, 1).contiguous().to(device=device, dtype=dtype)


def _cpu_packable(weight: Int4Weight, dtype: torch.dtype, device: torch.device) -> bool:
    out_features, _ = weight.shape
    return (device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)
            and weight.group_size in TINYGEMM_GROUPS and out_features % 16 == 0
            and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"))


def _cuda_packable(weight: Int4Weight, dtype: torch.dtype, device: torch.device) -> bool:
    out_features, in_features = weight.shape
    return (device.type == "cuda" and dtype == torch.bfloat16
            and torch.cuda.get_device_capability(device) >= (8, 0)
            and weight.group_size in TINYGEMM_GROUPS and out_features % 8 == 0
            and in_features % 32 == 0)


class Int4Kernel(LinearKernel):
    """y = x W^T + bias for an `Int4Weight` W, in the fastest form its device and shape allow."""

    def __init__(self, weight: Int4Weight, bias: torch.Tensor | None, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.out_features, self.in_features = weight.shape
        self.group_size, self.dtype = weight.group_size, dtype
        self.bias = None if bias is None else bias.to(device=device, dtype=dtype)
        q = weight.q.to(device)
        if _cpu_packable(weight, dtype, device):
            self.mode = "cpu"
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
            self.scales_zeros = _scales_and_zeros(weight, dtype, device)
        elif _cuda_packable(weight, dtype, device):
            self.mode = "cuda"
            nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # even input in the high nibble
            tiles = 8 if self.in_features % 128 == 0 else 4 if self.in_features % 64 == 0 else 2
            self.packed = torch.ops.aten._convert_weight_to_int4pack(nibbles.contiguous(), tiles)
            self.scales_zeros = _scales_and_zeros(weight, dtype, device)
        else:
            self.mode = "dequant"
            self.packed = (q[:, ::2] | q[:, 1::2] << 4).to(torch.uint8).contiguous()
            self.scale = weight.scale.float().to(device)
            self.minimum = weight.minimum.float().to(device)
        self.name = f"int4-g{self.group_size}-{device.type if self.mode != 'dequant' else 'dequant'}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dequant":
            y = F.linear(x, self._widen().to(x.dtype))
        else:
            flat = x.reshape(-1, self.in_features).contiguous()
            if self.mode == "cpu":
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size,
                                                               self.scales_zeros)
            else:
                y = torch.ops.aten._weight_int4pack_mm(flat, self.packed, self.group_size,
                                                       self.scales_zeros)
            y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def _widen(self) -> torch.Tensor:
        """The float32 weight, unpacked from its nibbles (the fallback's per-call work)."""
        q = torch.stack([self.packed & 15, self.packed >> 4], dim=2)
        q = q.view(self.out_features, -1, self.group_size).float()
        w = torch.addcmul(self.minimum[..., None], q, self.scale[..., None])
        return w.view(self.out_features, self.in_features)

    @property
    def nbytes(self) -> int:
        tables = (self.scales_zeros,) if self.mode != "dequant" else (self.scale, self.minimum)
        tensors = (self.packed, *tables) + (() if self.bias is None else (self.bias,))
        return sum(t.numel() * t.element_size() for t in tensors)
