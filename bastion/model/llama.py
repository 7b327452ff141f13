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

    def forward(self, rope: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream: `x` is the last sublayer's output, not yet added to `residual`
        (None before the first layer: `x` is the embedding); each norm adds it in its pass."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.forward_add(x, residual)
        h = self.reduce(self.self_attn(rope, h))
        h, residual = self.post_attention_layernorm.forward_add(h, residual)
        return self.reduce(self.mlp(h)), residual


class LlamaModel(nn.Module):
    """Token ids and positions in, last-layer hidden states out; logits on request."""

    def __init__(self, cfg: ArchConfig, max_positions: int,
                 backend: AttentionBackend | None = None, head_rows: slice | None = None) -> None:
        """`head_rows`: a vocabulary-parallel LM head that holds only these rows (token ids);
        `compute_logits` then joins the workers' logits with the group's gather."""
        super().__init__()
        self.cfg, self.head_rows = cfg, head_rows
        backend = backend or SdpaPagedBackend()
        self.rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling)
        # NOTE: `_weight`: no random init (on the meta device it imports torch._dynamo, ~1.2 s of
        # every start); the loader fills every parameter
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg, backend) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        rows = cfg.vocab_size if head_rows is None else head_rows.stop - head_rows.start
        self.lm_head = Linear(cfg.hidden_size, rows)
        self.tie_lm_head()
        self.fused_decoder: FusedDecoder | None = None  # set by the runner (fused_decode.py)
        self.gather_logits: Callable[[torch.Tensor], torch.Tensor | None] | None = None

    def use_tensor_group(self, all_reduce: Callable[[torch.Tensor], torch.Tensor],
                         gather_logits: Callable[[torch.Tensor], torch.Tensor | None]) -> None:
        """Join the partial sums of this worker's slice of every layer with `all_reduce`, and
        the workers' shares of the logits with `gather_logits` (the whole on worker 0)."""
        for layer in self.layers:
            layer.reduce = all_reduce
        self.gather_logits = gather_logits

    def use_attention_backend(self, backend: AttentionBackend) -> None:
        """Every attention layer computes with `backend` (model/attention/choose.py)."""
        for layer in self.attention_layers:
            layer.backend = backend

    def tie_lm_head(self) -> None:
        """With tied embeddings the LM head multiplies by the embedding table itself (its
        `head_rows` when the head is split: a view, no copy)."""
        if not self.cfg.tie_word_embeddings:
            return
        if self.head_rows is None:
            self.lm_head.weight = self.embed_tokens.weight
        else:
            self.lm_head.weight = nn.Parameter(self.embed_tokens.weight.detach()[self.head_rows],
                                               requires_grad=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.fused_decoder is not None:
            ctx = current_context()
            if FusedDecoder.accepts(input_ids, ctx):
                return self.fused_decoder(input_ids, positions, ctx)
        x = self.embed_tokens(input_ids)
        rope = self.rotary.tables(positions, x.dtype)
        residual = None
        for layer in self.layers:
            x, residual = layer(rope, x, residual)
        return self.norm(x) if residual is None else self.norm.forward_add(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Logits [rows, vocab] of `hidden` [rows, hidden]; with a split head, float32 and
        on worker 0 only (the other workers send their share and get None)."""
        logits = self.lm_head(hidden)
        if self.gather_logits is None:
            return logits
        return self.gather_logits(logits.float())

    @property
    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn for layer in self.layers]
