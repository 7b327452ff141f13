"""The fused one-sequence decode step: a whole forward pass of one new token in one C++ call.

When the engine runs a single sequence (the interactive case), eager PyTorch spends more time
dispatching the step's ~1800 small ops than computing them. `FusedDecoder` hands the whole
step (embedding, every layer, the final norm) to `cpu_kernels`' `Decoder`, which reads the
same weights and the same paged KV cache as the eager model. It is used on CPU for bfloat16
and float32 models with float or int8 weights, for steps of exactly one decode; `--enforce-eager`
turns it off (as vLLM's flag turns off CUDA graphs and compilation).
"""
from __future__ import annotations

import logging

import torch

from bastion.model.attention import AttentionContext
from bastion.model.cpu_kernels.build import kernels_or_none
from bastion.model.linear.cpu import BlockedKernel
from bastion.model.linear.dense import DenseKernel
from bastion.model.linear.int8 import Int8Kernel
from bastion.model.linear.layer import Linear

logger = logging.getLogger(__name__)


class FusedDecoder:
    """Runs lone decode steps of a `LlamaModel` through the C++ `Decoder`."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder

    @classmethod
    def build(cls, model, block_size: int) -> FusedDecoder | None:
        """A decoder over `model`'s weights and (allocated) KV caches, or None (reason logged)."""
        reason = _unsupported(model)
        kernels = None if reason else kernels_or_none()
        if reason is None and kernels is None:
            reason = "bastion's CPU kernels are unavailable"
        if reason is not None:
            logger.info("decode steps run eagerly: %s", reason)
            return None
        cfg, dtype = model.cfg, model.embed_tokens.weight.dtype
        shape = kernels.DecoderShape()
        shape.hidden, shape.intermediate = cfg.hidden_size, cfg.intermediate_size
        shape.num_heads, shape.num_kv_heads, shape.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        shape.block_size, shape.eps, shape.scale = block_size, cfg.rms_norm_eps, cfg.head_dim ** -0.5
        layers = model.layers
        attn = [layer.self_attn for layer in layers]

        def norms(modules):
            return [m.weight.detach().to(dtype).contiguous() for m in modules]

        w = kernels.DecoderWeights()
        w.embed = model.embed_tokens.weight.detach().contiguous()
        w.final_norm = model.norm.weight.detach().to(dtype).contiguous()
        w.cos, w.sin = model.rotary.cos.contiguous(), model.rotary.sin.contiguous()
        w.norm1 = norms(layer.input_layernorm for layer in layers)
        w.norm2 = norms(layer.post_attention_layernorm for layer in layers)
        if cfg.qk_norm:
            w.q_norm, w.k_norm = norms(a.q_norm for a in attn), norms(a.k_norm for a in attn)
        if cfg.qkv_bias:
            w.qkv_bias = [a.qkv_proj.kernel.bias.float().contiguous() for a in attn]
        w.qkv, w.qkv_scale = _matrices(a.qkv_proj for a in attn)
        w.o, w.o_scale = _matrices(a.o_proj for a in attn)
        w.gate_up, w.gate_up_scale = _matrices(layer.mlp.gate_up_proj for layer in layers)
        w.down, w.down_scale = _matrices(layer.mlp.down_proj for layer in layers)
        w.k_cache, w.v_cache = [a.k_cache for a in attn], [a.v_cache for a in attn]
        decoder = kernels.make_decoder(shape, w)
        logger.info("decode steps of one sequence run fused (bastion's C++ decode step)")
        return cls(decoder)

    @staticmethod
    def accepts(input_ids: torch.Tensor, ctx: AttentionContext | None) -> bool:
        """Whether this step is a lone decode: one token, one decode group, no prefill."""
        return (input_ids.numel() == 1 and ctx is not None and not ctx.prefills
                and len(ctx.decodes) == 1 and ctx.decodes[0].context_len > 0)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor,
                 ctx: AttentionContext) -> torch.Tensor:
        """The final-normed hidden state [1, hidden] of the step's one token."""
        group = ctx.decodes[0]
        return self.decoder.step(int(input_ids[0]), int(positions[0]), int(ctx.slot_mapping[0]),
                                 group.block_tables[0], group.context_len)


def _matrices(linears) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The layers' weights, and their float32 row scales when they are int8 (else no scales)."""
    weights, scales = [], []
    for linear in linears:
        kernel = linear.kernel
        if isinstance(kernel, Int8Kernel):
            weights.append(kernel.q)
            scales.append(kernel.scale.float().contiguous())
        elif isinstance(kernel, BlockedKernel):
            weights.append(kernel.packed)
        else:
            weights.append(kernel.weight.detach().contiguous())
    return weights, scales


def _unsupported(model) -> str | None:
    """Why the fused step cannot run this model, or None."""
    weight = model.embed_tokens.weight
    if weight.device.type != "cpu":
        return f"the fused decode step is CPU-only (model on {weight.device})"
    if weight.dtype not in (torch.bfloat16, torch.float32):
        return f"the fused decode step takes bfloat16 or float32 (model in {weight.dtype})"
    kinds = set()
    for name, module in model.named_modules():
        if not isinstance(module, Linear) or name == "lm_head":
            continue
        kernel = module.kernel
        if isinstance(kernel, Int8Kernel):
            kinds.add("int8")
        elif isinstance(kernel, BlockedKernel) or (isinstance(kernel, DenseKernel) and weight.dtype == torch.float32):
            kinds.add("float")
        else:
            return f"layer {name} runs the {kernel.name} kernel (the fused step reads bastion-cpu, float32 or int8 weights)"
    if len(kinds) > 1:
        return "the layers mix int8 and float weights"
    return None
