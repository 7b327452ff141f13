"""llama.cpp's tensor names -> bastion's parameter names, and the Q/K row order llama.cpp uses."""
from __future__ import annotations

import re

import torch

from bastion.model.arch_config import ArchConfig

_GLOBAL = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}
# blk.N.<name> -> (our module under layers.N, shard of a merged layer or None)
_BLOCK = {
    "attn_norm": ("input_layernorm", None), "ffn_norm": ("post_attention_layernorm", None),
    "attn_q": ("self_attn.qkv_proj", 0), "attn_k": ("self_attn.qkv_proj", 1),
    "attn_v": ("self_attn.qkv_proj", 2), "attn_output": ("self_attn.o_proj", None),
    "attn_q_norm": ("self_attn.q_norm", None), "attn_k_norm": ("self_attn.k_norm", None),
    "ffn_gate": ("mlp.gate_up_proj", 0), "ffn_up": ("mlp.gate_up_proj", 1),
    "ffn_down": ("mlp.down_proj", None),
}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
# tensors that are not parameters: Llama 3's rope divisors, read into the ArchConfig
SKIPPED = frozenset({"rope_freqs.weight"})


def target(name: str) -> tuple[str, int | None] | None:
    """(our parameter name, shard) for a GGUF tensor name; None for a name we do not know."""
    stem, _, kind = name.rpartition(".")
    if stem in _GLOBAL and kind == "weight":
        return f"{_GLOBAL[stem]}.weight", None
    found = _BLOCK_NAME.match(name)
    if found and found.group(2) in _BLOCK:
        module, shard = _BLOCK[found.group(2)]
        return f"layers.{found.group(1)}.{module}.{found.group(3)}", shard
    return None


def gguf_name(pname: str, shard: int | None) -> str:
    """The GGUF tensor name that fills `pname` (or its `shard`): for messages."""
    for stem, ours in _GLOBAL.items():
        if pname == f"{ours}.weight":
            return f"{stem}.weight"
    layer, _, rest = pname.removeprefix("layers.").partition(".")
    module, _, kind = rest.rpartition(".")
    for theirs, (ours, part) in _BLOCK.items():
        if ours == module and part == shard:
            return f"blk.{layer}.{theirs}.{kind}"
    return pname


def row_order(name: str, cfg: ArchConfig) -> torch.Tensor | None:
    """The rows to take, in order, to undo llama.cpp's Q/K permutation; None when none applies.

    llama.cpp's converter reorders each head's rows of Q and K for the llama architecture (its
    rotary embedding pairs adjacent dimensions, Hugging Face's pairs the two halves): within a
    head of d rows, stored row 2i+j is original row j*d/2 + i."""
    if cfg.architecture != "LlamaForCausalLM":
        return None
    found = _BLOCK_NAME.match(name)
    if not found or found.group(2) not in ("attn_q", "attn_k"):
        return None
    heads = cfg.num_heads if found.group(2) == "attn_q" else cfg.num_kv_heads
    half = cfg.head_dim // 2
    stored = torch.arange(heads * cfg.head_dim).view(heads, half, 2)
    return stored.transpose(1, 2).reshape(-1)
