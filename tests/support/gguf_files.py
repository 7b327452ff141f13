"""GGUF files written with the `gguf` package from a Hugging Face safetensors folder, the way
llama.cpp's converter lays them out (its tensor names, Q/K rows permuted for 'llama', 1-D tensors
in F32, the BPE tokenizer and chat template as metadata)."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file

_ARCH = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
_BLOCK = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
          "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down"}


def gguf_tensor_name(hf_name: str) -> str:
    """model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight (llama.cpp's name)."""
    name = hf_name.removeprefix("model.")
    top = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if name in top:
        return top[name]
    _, layer, rest = name.split(".", 2)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_BLOCK[module]}.{kind}"


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's reordering of Q/K rows for the llama architecture."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def encode(values: np.ndarray, qtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """`values` (float32) as GGUF stores them in `qtype`: (array, raw_dtype for add_tensor)."""
    kind = gguf.GGMLQuantizationType[qtype]
    if qtype == "F32":
        return values.astype(np.float32), None
    if qtype == "F16":
        return values.astype(np.float16), None
    return gguf.quants.quantize(values, kind), kind


def stored_tensors(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, {llama.cpp tensor name: float32 array as the converter writes it})."""
    config = json.loads((folder / "config.json").read_text())
    arch = _ARCH[config["architectures"][0]]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    out = {}
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        values = tensor.to(torch.float32).numpy()
        gname = gguf_tensor_name(name)
        if arch == "llama" and (".attn_q." in gname or ".attn_k." in gname):
            values = permute(values, heads if ".attn_q." in gname else kv_heads)
        out[gname] = values
    if config.get("tie_word_embeddings"):
        out.pop("output.weight", None)
    return config, out


def write_gguf(folder: Path, out: Path, qtype: str = "F32", arch: str | None = None,
               overrides: dict[str, str] | None = None, edit=None,
               raw: dict[str, tuple[np.ndarray, str]] | None = None) -> Path:
    """Write `folder` (an HF safetensors folder with tokenizer.json) as a GGUF at `out`; matrices
    in `qtype` (per-tensor `overrides` by GGUF name), 1-D tensors in F32. `arch` overrides
    general.architecture (to make an unsupported one); `edit(tensors)` may change the
    {name: float32 array} before writing (drop one, change a shape); `raw` gives tensors as
    stored bytes and their type ({name: (uint8 [rows, bytes per row], 'Q6_K')})."""
    config, tensors = stored_tensors(folder)
    if edit is not None:
        edit(tensors)
    name = arch or _ARCH[config["architectures"][0]]
    w = gguf.GGUFWriter(str(out), name)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config.get("max_position_embeddings", 2048))
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(config.get("num_key_value_heads") or heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    w.add_rope_freq_base(float(config.get("rope_theta") or rope.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    if (folder / "tokenizer.json").is_file():
        _add_tokenizer(w, folder)
    for gname, values in tensors.items():
        if gname in (raw or {}):
            data, kind = raw[gname]
            w.add_tensor(gname, data, raw_dtype=gguf.GGMLQuantizationType[kind])
            continue
        kind = (overrides or {}).get(gname, qtype) if values.ndim > 1 else "F32"
        data, raw_dtype = encode(values, kind)
        w.add_tensor(gname, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _add_tokenizer(w: gguf.GGUFWriter, folder: Path) -> None:
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = dict(spec["model"]["vocab"])
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab.update(special)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for text, index in vocab.items():
        tokens[index] = text
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    for key, adder in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                       ("pad_token", w.add_pad_token_id)):
        if tok_config.get(key) in special:
            adder(special[tok_config[key]])
    from transformers import AutoTokenizer
    bos = special.get(tok_config.get("bos_token"))
    w.add_add_bos_token(bos is not None and AutoTokenizer.from_pretrained(folder)("a").input_ids[:1] == [bos])
    if tok_config.get("chat_template"):
        w.add_chat_template(tok_config["chat_template"])


def rounded_folder(folder: Path, out: Path, qtype: str, overrides: dict[str, str] | None = None) -> Path:
    """A copy of `folder` whose weights are what `write_gguf(folder, ..., qtype, overrides=...)`
    stores, read back with the gguf package's own dequantize (float32): the exact reference for
    a lossy GGUF."""
    import shutil

    from safetensors.torch import save_file

    config = json.loads((folder / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    rounded = {}
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        gname = gguf_tensor_name(name)
        values = tensor.to(torch.float32).numpy()
        kind = (overrides or {}).get(gname, qtype) if values.ndim > 1 else "F32"
        data, raw = encode(values, kind)
        back = gguf.quants.dequantize(data, raw or gguf.GGMLQuantizationType[kind]).reshape(values.shape)
        rounded[name] = torch.from_numpy(np.array(back, dtype=np.float32))
    if config.get("tie_word_embeddings"):
        rounded.pop("lm_head.weight", None)
    config["torch_dtype"] = config["dtype"] = "float32"
    save_file(rounded, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config))
    for extra in folder.iterdir():
        if extra.name not in ("config.json", "model.safetensors") and extra.is_file():
            shutil.copy(extra, out / extra.name)
    return out
