"""`ArchConfig`, the few numbers a Llama-family model needs, and `ModelLoadError`: what every
checkpoint reader (config.json in arch.py, GGUF metadata in gguf/) produces or raises."""
from __future__ import annotations

from dataclasses import dataclass


class ModelLoadError(ValueError):
    """A model folder or GGUF file that cannot be served, with a message that says why."""


@dataclass(frozen=True)
class ArchConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    torch_dtype: str | None
    eos_token_ids: tuple[int, ...]
    sliding_window: int | None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim
