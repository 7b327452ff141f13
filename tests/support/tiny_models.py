"""Random-weight tiny checkpoints of each supported architecture, written with transformers."""
from __future__ import annotations

from pathlib import Path

import torch
import transformers

_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def make_tiny_model(out: Path, arch: str = "qwen3", seed: int = 0, vocab_size: int = 512,
                    tie: bool = False, **overrides) -> Path:
    """Write a small random model; weights scaled up so greedy choices are not near-ties."""
    config_cls, model_cls = (getattr(transformers, n) for n in _CLASSES[arch])
    kwargs = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024, tie_word_embeddings=tie, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    if arch == "qwen3":
        kwargs["head_dim"] = 32
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs))
    model.save_pretrained(out, safe_serialization=True)
    return out
