"""Reads a Hugging Face `config.json` (or a GGUF file's metadata) into the few numbers a
Llama-family model needs."""
from __future__ import annotations

import json
from pathlib import Path

from bastion.model.arch_config import ArchConfig, ModelLoadError  # noqa: F401 (callers import them from here)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM",
                           "Qwen2ForCausalLM", "Qwen3ForCausalLM")


def _eos_ids(raw: dict, folder: Path) -> tuple[int, ...]:
    ids: list[int] = []
    gen = folder / "generation_config.json"
    sources = [raw]
    if gen.is_file():
        sources.insert(0, json.loads(gen.read_text()))
    for src in sources:
        value = src.get("eos_token_id")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and item not in ids:
                ids.append(item)
    return tuple(ids)


def read_arch_config(folder: str | Path) -> ArchConfig:
    """Parse `folder/config.json`, or the metadata of a GGUF file; raise ModelLoadError for
    anything we cannot serve."""
    from bastion.model.gguf.reader import is_gguf

    folder = Path(folder)
    path = folder / "config.json"
    if is_gguf(folder):
        from bastion.model.gguf.arch import read_gguf_arch
        return read_gguf_arch(folder)
    if not folder.is_dir():
        kind = "is a file but not a GGUF file" if folder.is_file() else "is not a directory"
        raise ModelLoadError(f"model path {str(folder)!r} {kind} "
                             "(bastion loads local model folders and GGUF files only)")
    if not path.is_file():
        raise ModelLoadError(f"{str(folder)!r} is not a model folder: config.json is missing")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: invalid JSON ({exc})") from None
    archs = raw.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ModelLoadError(f"{path}: unsupported architecture {archs or 'missing'}; "
                             f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    try:
        return _build(raw, arch, folder)
    except KeyError as exc:
        raise ModelLoadError(f"{path}: missing required field {exc.args[0]!r}") from None


def _build(raw: dict, arch: str, folder: Path) -> ArchConfig:
    num_heads = raw["num_attention_heads"]
    hidden = raw["hidden_size"]
    scaling = raw.get("rope_scaling") or raw.get("rope_parameters")
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ModelLoadError(f"{folder / 'config.json'}: unsupported rope scaling {rope_type!r}; "
                             "supported: default, llama3")
    theta = raw.get("rope_theta", (scaling or {}).get("rope_theta", 10000.0))
    window = raw.get("sliding_window") if raw.get("use_sliding_window", True) else None
    return ArchConfig(
        architecture=arch,
        vocab_size=raw["vocab_size"],
        hidden_size=hidden,
        intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=raw.get("num_key_value_heads") or num_heads,
        head_dim=raw.get("head_dim") or hidden // num_heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        rope_scaling=scaling if rope_type == "llama3" else None,
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=arch == "Qwen2ForCausalLM" or bool(raw.get("attention_bias", False)),
        qk_norm=arch == "Qwen3ForCausalLM",
        torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        eos_token_ids=_eos_ids(raw, folder),
        sliding_window=window if isinstance(window, int) else None,
    )
