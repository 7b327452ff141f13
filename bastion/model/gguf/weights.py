"""Fill a model from a GGUF file: Q4_0/Q4_1 matrices as `Int4Weight`s, everything else widened.

A linear layer runs quantized when every GGUF tensor that makes its weight (q, k and v for the
merged qkv_proj; gate and up for gate_up_proj) is Q4_0 or Q4_1; otherwise, and for 1-D tensors
and the embedding, the tensors are dequantized to float and the layer is an ordinary float one
(which `--quantization` may still quantize)."""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path

import torch

from bastion.model.arch_config import ArchConfig, ModelLoadError
from bastion.model.fill import ParamFill, shard_rows
from bastion.model.gguf.names import SKIPPED, gguf_name, row_order, target
from bastion.model.gguf.reader import open_gguf
from bastion.model.gguf.tensors import FLOAT_TYPES, INT4_TYPES, check_type, read_int4, torch_shape, widen
from bastion.model.linear.layer import Linear
from bastion.model.linear.quantized import Int4Weight

logger = logging.getLogger(__name__)


def plan(model: torch.nn.Module, cfg: ArchConfig, reader, path: Path) -> tuple[ParamFill, dict]:
    """Check every tensor's name, type and shape against the model (no data is read) and group
    them by parameter: {pname: [(shard, tensor), ...]}. Raises ModelLoadError on the first problem."""
    fill = ParamFill(model, cfg, str(path), "the GGUF metadata", describe=gguf_name)
    groups: dict[str, list] = defaultdict(list)
    for tensor in reader.tensors:
        if tensor.name in SKIPPED:
            continue
        found = target(tensor.name)
        if found is None:
            fill.unexpected.append(tensor.name)
            continue
        pname, shard = found
        if not fill.accepts(pname, tensor.name):
            continue
        check_type(tensor, path)
        fill.check_shape(pname, shard, torch_shape(tensor), tensor.name)
        groups[pname].append((shard, tensor))
        fill.mark(pname, shard)
    fill.check_complete()
    fill.loaded.clear()
    return fill, groups


def check_gguf(path: str | Path) -> ArchConfig:
    """Everything about a GGUF file that can be checked without reading its weights: metadata,
    tensor names, types and shapes (what `bastion serve` checks before it starts anything)."""
    from bastion.model.fill import empty_model
    from bastion.model.gguf.arch import read_gguf_arch

    path = Path(path)
    reader = open_gguf(path)
    cfg = read_gguf_arch(path, reader)
    plan(empty_model(cfg, torch.float32, torch.device("meta"), 1), cfg, reader, path)
    return cfg


def load_gguf_weights(model: torch.nn.Module, path: str | Path, cfg: ArchConfig) -> None:
    """Fill `model` (built from `cfg`, uninitialised) from the GGUF file at `path`."""
    path = Path(path)
    reader = open_gguf(path)
    fill, groups = plan(model, cfg, reader, path)
    modules = dict(model.named_modules())
    counts: dict[str, Counter] = defaultdict(Counter)
    for pname, parts in groups.items():
        module = modules[pname.rpartition(".")[0]]
        as_int4 = (isinstance(module, Linear) and pname.endswith(".weight")
                   and all(t.tensor_type.name in INT4_TYPES for _, t in parts))
        if as_int4:
            module.prequantized = Int4Weight.empty(module.out_features, module.in_features, 32)
        for shard, tensor in parts:
            order = row_order(tensor.name, cfg)
            try:
                if as_int4:
                    _fill_int4(module.prequantized, read_int4(tensor), order, cfg, pname, shard)
                    fill.mark(pname, shard)
                else:
                    value = widen(tensor)
                    fill.copy(pname, shard, _reordered(value, order), tensor.name)
            except (ValueError, RuntimeError) as exc:  # NOTE: a data region shorter than its table says
                raise ModelLoadError(f"{path}: cannot read tensor {tensor.name} "
                                     f"({type(exc).__name__}: {exc})") from None
            counts[tensor.tensor_type.name]["int4" if as_int4 else "widened"] += 1
    fill.check_complete()
    logger.info("%s: %s", path.name, describe_counts(counts, next(model.parameters()).dtype))


def _fill_int4(dest: Int4Weight, part: Int4Weight, order, cfg: ArchConfig, pname: str,
               shard: int | None) -> None:
    if shard is not None:
        dest = dest.rows(*shard_rows(cfg, pname, shard))
    for name in ("q", "scale", "minimum"):
        getattr(dest, name).numpy()[...] = _reordered(getattr(part, name), order).numpy()


def _reordered(value: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """`value`'s rows in `order` (None: as they are). NOTE: numpy, which shares the memory:
    torch's row gather and uint8 copies measured ~500x slower here (16 ms for 576x576)."""
    if order is None:
        return value
    return torch.from_numpy(value.numpy()[order.numpy()])


def describe_counts(counts: dict[str, Counter], dtype: torch.dtype) -> str:
    """'F32: 61 as bfloat16; Q4_1: 210 run quantized (int4), 0 widened to bfloat16; Q8_0: 1
    widened to bfloat16' for the start-up log."""
    name = str(dtype).removeprefix("torch.")

    def one(kind: str, c: Counter) -> str:
        if kind in INT4_TYPES:
            return f"{kind}: {c['int4']} run quantized (int4), {c['widened']} widened to {name}"
        return f"{kind}: {c['widened']} {'as' if kind in FLOAT_TYPES else 'widened to'} {name}"
    return "; ".join(one(kind, c) for kind, c in sorted(counts.items()))
