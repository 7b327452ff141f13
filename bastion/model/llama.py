"""Llama-family decoder (Llama, Mistral, Qwen2 with qkv bias, Qwen3 with q/k norm) over paged KV."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from bastion.model.arch import ArchConfig
from bastion.model.attention import AttentionBackend, SdpaPagedBackend, current_context
from bastion.model.fused_decode import FusedDecoder
from bastion.model.layers import GatedMLP, RMSNorm, RotaryEmbedding, apply_rotary
from bastion.model.linear.layer import Linear


class Attention(nn.Module):
    def __init__(self, cfg: ArchConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv_proj = Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.o_proj = Linear(cfg.q_size, cfg.hidden_size)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.backend = backend
        self.scale = cfg.head_dim ** -0.5
        # Set by the model runner once the KV pool is allocated.
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, rope: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        qkv = self.qkv_proj(x)
        heads = cfg.num_heads + cfg.num_kv_heads
        v = qkv[:, cfg.q_size + cfg.kv_size:].view(-1, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q = self.q_norm(qkv[:, :cfg.q_size].view(-1, cfg.num_heads, cfg.head_dim))
            k = self.k_norm(qkv[:, cfg.q_size:cfg.q_size + cfg.kv_size].view(-1, cfg.num_kv_heads, cfg.head_dim))
            qk = torch.cat((q, k), dim=1)
        else:
            qk = qkv[:, :cfg.q_size + cfg.kv_size].view(-1, heads, cfg.head_dim)
        # NOTE: q and k are rotated as one tensor: half the ops of rotating each
        q, k = apply_rotary(qk, *rope).split([cfg.num_heads, cfg.num_kv_heads], dim=1)
        out = self.backend.forward(q, k, v, self.k_cache, self.v_cache, self.scale)
        return self.o_proj(out.reshape(-1, cfg.q_size))


def _alone(x: torch.Tensor) -> torch.Tensor:
    return x


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, backend)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)
        # Sums the partial outputs of o_proj and down_proj over tensor-parallel workers (a
        # worker holds a slice of their inputs); alone, nothing to sum.
        self.reduce: Callable[[torch.Tensor], torch.Tensor] = _alone

    def forward(self, rope: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        x = x + self.reduce(self.self_attn(rope, self.input_layernorm(x)))
        return x + self.reduce(self.mlp(self.post_attention_layernorm(x)))


class LlamaModel(nn.Module):
    """Token ids and positions in, last-layer hidden states out; logits on request."""

    def __init__(self, cfg: ArchConfig, max_positions: int,
                 backend: AttentionBackend | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        backend = backend or SdpaPagedBackend()
        self.rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, backend) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size)
        self.tie_lm_head()
        self.fused_decoder: FusedDecoder | None = None  # set by the runner (fused_decode.py)

    def use_tensor_group(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Join the partial sums of this worker's slice of every layer with `all_reduce`."""
        for layer in self.layers:
            layer.reduce = all_reduce

    def tie_lm_head(self) -> None:
        """With tied embeddings the LM head multiplies by the embedding table itself."""
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.fused_decoder is not None:
            ctx = current_context()
            if FusedDecoder.accepts(input_ids, ctx):
                return self.fused_decoder(input_ids, positions, ctx)
        x = self.embed_tokens(input_ids)
        rope = self.rotary.tables(positions, x.dtype)
        for layer in self.layers:
            x = layer(rope, x)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    @property
    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn for layer in self.layers]
