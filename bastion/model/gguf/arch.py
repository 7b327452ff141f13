"""An `ArchConfig` from a GGUF file's metadata (llama.cpp's keys, `<architecture>.<key>`)."""
from __future__ import annotations

from pathlib import Path

from bastion.model.arch_config import ArchConfig, ModelLoadError
from bastion.model.gguf.reader import field, open_gguf, require

# llama.cpp's architecture name -> ours; llama.cpp converts Mistral (7B, Nemo) as 'llama'
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# what `--dtype auto` means for a file whose matrices are all of one float type; else bfloat16
_FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def read_gguf_arch(path: str | Path, reader=None) -> ArchConfig:
    """Parse a GGUF file's metadata; ModelLoadError for anything bastion cannot serve."""
    path = Path(path)
    reader = reader if reader is not None else open_gguf(path)
    name = require(reader, "general.architecture", path)
    if name not in ARCHITECTURES:
        raise ModelLoadError(f"{path}: unsupported GGUF architecture {name!r}; "
                             f"supported: {', '.join(ARCHITECTURES)}")
    key = lambda k: f"{name}.{k}"  # noqa: E731
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise ModelLoadError(f"{path}: tensor token_embd.weight is missing")
    hidden = int(require(reader, key("embedding_length"), path))
    heads = int(require(reader, key("attention.head_count"), path))
    head_dim = int(field(reader, key("attention.key_length"), hidden // heads))
    rope_dims = field(reader, key("rope.dimension_count"))
    if rope_dims is not None and int(rope_dims) != head_dim:
        raise ModelLoadError(f"{path}: partial rotary embeddings ({rope_dims} of {head_dim} dimensions) "
                             "are not supported")
    vocab = int(tensors["token_embd.weight"].shape[1])  # NOTE: ne order: [hidden, vocab]
    tokens = reader.fields.get("tokenizer.ggml.tokens")  # NOTE: its length only; not 49k strings
    if tokens is not None and len(tokens.data) > vocab:
        raise ModelLoadError(f"{path}: {len(tokens.data)} tokens but an embedding of {vocab} rows")
    return ArchConfig(
        architecture=ARCHITECTURES[name],
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(require(reader, key("feed_forward_length"), path)),
        num_layers=int(require(reader, key("block_count"), path)),
        num_heads=heads,
        num_kv_heads=int(field(reader, key("attention.head_count_kv"), heads)),
        head_dim=head_dim,
        rms_norm_eps=float(field(reader, key("attention.layer_norm_rms_epsilon"), 1e-6)),
        rope_theta=float(field(reader, key("rope.freq_base"), 10000.0)),
        rope_scaling=_rope_scaling(reader, name, tensors, path),
        max_position_embeddings=int(field(reader, key("context_length"), 2048)),
        tie_word_embeddings="output.weight" not in tensors,
        qkv_bias="blk.0.attn_q.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        torch_dtype=_checkpoint_dtype(reader),
        eos_token_ids=_eos_ids(reader),
        sliding_window=None,
    )


def _rope_scaling(reader, name: str, tensors: dict, path: Path) -> dict | None:
    """llama.cpp writes Llama 3's scaling as a tensor of per-frequency divisors (rope_freqs);
    linear and YaRN scaling as metadata, which bastion does not run."""
    kind = field(reader, f"{name}.rope.scaling.type")
    if kind not in (None, "none"):
        raise ModelLoadError(f"{path}: unsupported rope scaling {kind!r}; supported: none, and "
                             "Llama 3's (a rope_freqs tensor)")
    freqs = tensors.get("rope_freqs.weight")
    if freqs is None:
        return None
    from gguf import dequantize
    factors = dequantize(freqs.data, freqs.tensor_type).reshape(-1)
    return {"rope_type": "freq_factors", "factors": tuple(float(f) for f in factors)}


def _checkpoint_dtype(reader) -> str:
    kinds = {t.tensor_type.name for t in reader.tensors if len(t.shape) > 1}
    if len(kinds) == 1 and (only := kinds.pop()) in _FLOAT_DTYPES:
        return _FLOAT_DTYPES[only]
    return "bfloat16"


def _eos_ids(reader) -> tuple[int, ...]:
    """llama.cpp's end-of-generation tokens: end of sequence, end of turn, end of message."""
    ids: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                "tokenizer.ggml.eom_token_id"):
        value = field(reader, key)
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return tuple(ids)
