"""The quantization math: int8 per output channel (symmetric), int4 in groups (asymmetric).

Both work in float32 on the weight as loaded and are the single definition of what each format
means; the kernels in int8.py and int4.py only change the layout these numbers are stored in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_GROUP_SIZE = 32  # groups of 32 inputs, as GGUF's Q4_0/Q4_1 blocks
MIN_INT4_GROUP = 8    # below this a layer is not worth int4: it keeps int8 (see quantized.py)


@dataclass
class Int4Weight:
    """A weight quantized to 4 bits, by us at load or by whoever wrote the checkpoint (GGUF
    Q4_0/Q4_1): w[o, i] = q[o, i] * scale[o, i // group_size] + minimum[o, i // group_size].

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

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: returns q int8 [out, in] in -127..127 and
    scale float32 [out] with w ~ q * scale (|error| <= scale / 2 per element)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # NOTE: an all-zero row stays 0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weight an int8 pair stands for."""
    return q.float() * scale.float()[:, None]


def int4_group_size(in_features: int, preferred: int = INT4_GROUP_SIZE) -> int | None:
    """The group size for a layer with `in_features` inputs: `preferred` when it divides them,
    else the largest smaller power of two that does; None when that is under MIN_INT4_GROUP."""
    group = preferred
    while group >= MIN_INT4_GROUP:
        if in_features % group == 0:
            return group
        group //= 2
    return None


def quantize_int4(weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE) -> Int4Weight:
    """Asymmetric min/max int4 in groups of `group_size` along the input dimension:
    scale = (max - min) / 15, q = round((w - min) / scale) in 0..15 (|error| <= scale / 2)."""
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(f"int4 groups of {group_size} do not divide {in_features} inputs")
    w = weight.detach().float().view(out_features, in_features // group_size, group_size)
    low, high = w.amin(dim=2), w.amax(dim=2)
    scale = (high - low) / 15.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: q = 0
    q = torch.round((w - low[..., None]) / safe[..., None]).clamp_(0, 15).to(torch.uint8)
    return Int4Weight(q.view(out_features, in_features), scale, low, group_size)
