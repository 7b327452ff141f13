"""Loads a checkpoint into a LlamaModel: safetensors folders (never pickle) here, GGUF files in gguf/."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open

from bastion.model.arch import ArchConfig, ModelLoadError
from bastion.model.fill import ParamFill, empty_model
from bastion.model.linear.prepare import prepare_linears
from bastion.model.llama import LlamaModel
from bastion.model.parallel.plan import TensorParallel

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
# HF tensor suffix -> (our parameter suffix, shard index, number of shards)
_MERGED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0), "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0), "mlp.up_proj": ("mlp.gate_up_proj", 1),
}


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(requested: str, checkpoint_dtype: str | None, device: torch.device) -> torch.dtype:
    """Pick the compute dtype; refuse one the device cannot run."""
    if requested == "auto":
        name = checkpoint_dtype if checkpoint_dtype in _DTYPES else "float32"
        if device.type == "cpu" and name == "float16":
            logger.info("checkpoint is float16; using bfloat16 on CPU")
            name = "bfloat16"
        return _DTYPES[name]
    if device.type == "cpu" and requested == "float16":
        raise ModelLoadError("--dtype float16 is not supported on CPU; use bfloat16 or float32")
    if device.type == "cuda" and requested == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ModelLoadError(f"--dtype bfloat16 is not supported on {torch.cuda.get_device_name(device)}; "
                             "use float16")
    return _DTYPES[requested]


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the model computes in: bfloat16 runs as float32 on CPUs without bf16 units.

    Without AVX512-BF16 or AMX, torch's bfloat16 matmuls are several times slower than float32
    ones, so the weights are upcast once at load time (float32 is also the more exact choice).
    """
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        logger.info("this CPU has no native bfloat16 matmul; computing in float32")
        return torch.float32
    return dtype


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files: from the shard index when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ModelLoadError(f"{index}: shard files missing: {', '.join(missing)}")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {', '.join(found)}; bastion never loads pickled weights)" if found else ""
        raise ModelLoadError(f"{str(folder)!r} has no *.safetensors weights{hint}")
    return files


def _target(name: str, tied: bool) -> tuple[str, int | None] | None:
    """Map a checkpoint tensor name to (our parameter name, shard); None means skip."""
    if _IGNORED.match(name) or (tied and name == "lm_head.weight"):
        return None
    if name.startswith("model."):
        name = name[len("model."):]
    for suffix, (ours, shard) in _MERGED.items():
        marker = f".{suffix}."
        if marker in name:
            return name.replace(marker, f".{ours}."), shard
    return name, None


def load_model(path: str | Path, cfg: ArchConfig, dtype: torch.dtype, device: torch.device,
               max_positions: int, quantization: str | None = None,
               tp: TensorParallel = TensorParallel()) -> LlamaModel:
    """Build the model without initialising it, fill every parameter from the checkpoint (a
    safetensors folder or a GGUF file), then give each linear layer its kernel (`quantization`:
    None, 'int8' or 'int4'; a GGUF's Q4 layers keep their own form). With tensor parallelism
    (`tp`), the model has worker `tp.rank`'s shapes and only its slices are read."""
    from bastion.model.gguf.reader import is_gguf

    path = Path(path)
    if tp.enabled:
        if is_gguf(path):
            raise ModelLoadError(f"{path}: --tensor-parallel-size > 1 loads safetensors folders; "
                                 "GGUF files are not sharded")
        model = _load_safetensors(path, cfg, dtype, device, max_positions, tp)
    elif is_gguf(path):
        from bastion.model.gguf.weights import load_gguf_weights
        model = empty_model(cfg, dtype, device, max_positions)
        load_gguf_weights(model, path, cfg)
    else:
        model = _load_safetensors(path, cfg, dtype, device, max_positions)
    prepare_linears(model, quantization)
    return model.eval()


def _load_safetensors(folder: Path, cfg: ArchConfig, dtype: torch.dtype, device: torch.device,
                      max_positions: int, tp: TensorParallel = TensorParallel()) -> LlamaModel:
    files = weight_files(folder)
    local = tp.local_config(cfg)
    model = empty_model(local, dtype, device, max_positions, tp.vocab_rows(cfg))
    fill = ParamFill(model, local, str(folder), "config.json" if not tp.enabled
                     else f"config.json, worker {tp.rank} of {tp.size}")
    if tp.enabled and cfg.tie_word_embeddings:
        fill.mark("lm_head.weight", None)  # a view of the embedding's rows, filled with it
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                target = _target(name, cfg.tie_word_embeddings)
                if target is not None and fill.accepts(target[0], name):
                    tensor = _read(f, name, cfg, target, tp)
                    fill.copy(target[0], target[1], tensor, f"{path.name}: {name}")
    fill.check_complete()
    return model


def _read(f, name: str, cfg: ArchConfig, target: tuple[str, int | None], tp: TensorParallel) -> torch.Tensor:
    """The tensor, or only this worker's rows or columns of it (read from the file as a slice)."""
    rows, cols = tp.row_slice(cfg, *target), tp.column_slice(cfg, target[0])
    if rows is None and cols is None:
        return f.get_tensor(name)
    part = f.get_slice(name)
    return part[rows] if rows is not None else part[:, cols]
