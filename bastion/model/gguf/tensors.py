"""One GGUF tensor as bastion uses it: widened to float32, or Q4_0/Q4_1 read as an `Int4Weight`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bastion.model.arch_config import ModelLoadError
from bastion.model.linear.quantized import Int4Weight

# read as they are into the int4 kernel (blocks of 32 along the row; see `read_int4`)
INT4_TYPES = ("Q4_0", "Q4_1")
# dequantized by the gguf package to float32, then cast to the model's dtype
WIDENED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
FLOAT_TYPES = ("F32", "F16", "BF16")
_GROUP = 32


def torch_shape(tensor) -> tuple[int, ...]:
    """The tensor's shape in torch's order (GGUF lists dimensions fastest first: ne0 = columns)."""
    return tuple(int(n) for n in reversed(tensor.shape))


def check_type(tensor, path: Path) -> None:
    """ModelLoadError unless bastion reads this tensor's type."""
    kind = tensor.tensor_type.name
    if kind not in INT4_TYPES + WIDENED_TYPES:
        raise ModelLoadError(f"{path}: tensor {tensor.name} has type {kind}, which bastion does not "
                             f"read; supported: {', '.join(INT4_TYPES + WIDENED_TYPES)}")


def widen(tensor) -> torch.Tensor:
    """The tensor dequantized to float32 (the gguf package's reference dequantization)."""
    from gguf import dequantize

    values = dequantize(np.asarray(tensor.data), tensor.tensor_type)
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(torch_shape(tensor)))  # a copy: the file is mapped read-only


def read_int4(tensor) -> Int4Weight:
    """A Q4_0 or Q4_1 matrix as an `Int4Weight` with group size 32, without widening it.

    A block of 32 weights is a float16 scale d (Q4_1: then a float16 minimum m) and 16 bytes:
    byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
    Q4_0 means d * (q - 8), so minimum = -8 d; Q4_1 means d * q + m."""
    rows, cols = torch_shape(tensor)
    head = 2 if tensor.tensor_type.name == "Q4_0" else 4
    blocks = np.asarray(tensor.data).reshape(rows, cols // _GROUP, head + 16)
    packed = blocks[..., head:]
    q = np.empty((rows, cols // _GROUP, _GROUP), dtype=np.uint8)  # NOTE: numpy: torch's uint8 ops
    np.bitwise_and(packed, 0x0F, out=q[..., :16])                  # on these views are ~60x slower
    np.right_shift(packed, 4, out=q[..., 16:])
    scale = _halves(blocks, 0)
    minimum = -8.0 * scale if head == 2 else _halves(blocks, 2)
    return Int4Weight(torch.from_numpy(q.reshape(rows, cols)), torch.from_numpy(scale),
                      torch.from_numpy(np.ascontiguousarray(minimum)), _GROUP)


def _halves(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte `at` of every block, as float32 [rows, blocks]."""
    return np.ascontiguousarray(blocks[..., at:at + 2]).view(np.float16)[..., 0].astype(np.float32)
