"""One model variant's numbers: teacher-forced log-likelihood and argmax on the passage, and
greedy continuations of the prompts, all through bastion's own engine."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from bastion.model.attention import AttentionContext, PrefillChunk, attention_context
from bastion.model.linear.dense import float_kernel
from bastion.model.linear.layer import Linear
from bastion.model.linear.quantized import quantize_kernel
from bastion.sampling_params import SamplingParams

LOGIT_ROWS = 256  # logits are computed this many positions at a time ([rows, vocab] float32)


@dataclass
class VariantRun:
    """What one variant produced; agreement is filled in against the reference afterwards."""

    name: str
    quantization: str | None
    weight_bytes: int
    load_seconds: float
    nll: float                      # mean negative log-likelihood per predicted token
    argmax: torch.Tensor            # [T - 1] the model's top token at each position
    generations: list[list[int]]

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


def build_engine(model: str, dtype: str, quantization: str | None, context: int,
                 head: str | None):
    """An engine for one variant; `head` ("float", "int8" or "int4") gives the LM head that form
    instead of `quantization`'s (possible when it is tied to the embedding, which stays float)."""
    from bastion.config.engine import EngineConfig
    from bastion.engine.core import EngineCore

    config = EngineConfig.from_kwargs(model, dtype=dtype, quantization=quantization,
                                      max_model_len=context, num_kv_blocks=context // 16 + 8,
                                      enable_prefix_caching=False)
    engine = EngineCore(config)
    llama = engine.runner.model
    if head is not None:
        if not llama.cfg.tie_word_embeddings:
            raise ValueError("another form for the LM head needs it tied to the embedding")
        weight = llama.embed_tokens.weight.detach()
        llama.lm_head.kernel = (float_kernel(weight, None) if head == "float"
                                else quantize_kernel(head, weight, None, layer="lm_head", as_asked=True))
    return engine


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the linear layers stream per token (what `prepare_linears` logs)."""
    return sum(m.kernel.nbytes for m in model.modules() if isinstance(m, Linear) and m.kernel)


@torch.inference_mode()
def teacher_forced(engine, token_ids: list[int]) -> tuple[float, torch.Tensor]:
    """Mean NLL of token t+1 given tokens 0..t, and the argmax at each position: one prefill."""
    runner = engine.runner
    count = len(token_ids)
    ids = torch.tensor(token_ids, device=runner.device)
    positions = torch.arange(count, device=runner.device)
    blocks = torch.arange(-(-count // runner.block_size), device=runner.device)  # slots 0..count-1
    ctx = AttentionContext(slot_mapping=positions.clone(), prefills=[PrefillChunk(0, count, count, blocks)])
    with attention_context(ctx):
        hidden = runner.model(ids, positions)
    total, tops = 0.0, []
    for start in range(0, count - 1, LOGIT_ROWS):
        stop = min(start + LOGIT_ROWS, count - 1)
        logits = runner.model.compute_logits(hidden[start:stop]).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        total -= logprobs.gather(1, ids[start + 1:stop + 1, None]).sum().item()
        tops.append(logits.argmax(dim=-1).cpu())
    return total / (count - 1), torch.cat(tops)


def greedy(engine, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy continuations, `max_tokens` each (end-of-text ignored: equal lengths compare)."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    out: dict[str, list[int]] = {}
    for _ in range(10 * max_tokens * len(prompts) + 10):
        if not engine.has_unfinished:
            break
        for step in engine.step():
            out.setdefault(step.request_id, []).extend(step.new_token_ids)
    return [out[str(i)] for i in range(len(prompts))]


def run_variant(name: str, model: str, dtype: str, quantization: str | None, head: str | None,
                passage: list[int], prompts: list[list[int]], max_tokens: int) -> VariantRun:
    started = time.perf_counter()
    context = max(len(passage), max(map(len, prompts)) + max_tokens)
    engine = build_engine(model, dtype, quantization, context, head)
    load = time.perf_counter() - started
    nll, argmax = teacher_forced(engine, passage)
    generations = greedy(engine, prompts, max_tokens)
    return VariantRun(name, quantization, weight_bytes(engine.runner.model), load, nll, argmax,
                      generations)


def prefix_agreement(got: list[int], want: list[int]) -> float:
    """Fraction of `want` that `got` reproduces before their first difference."""
    same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return same / len(want) if want else 1.0
