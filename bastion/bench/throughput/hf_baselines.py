"""transformers baselines: padded static batches and continuous batching (`generate_batch`)."""
from __future__ import annotations

import logging
import time

import torch

from bastion.bench.workloads import BenchRequest

logger = logging.getLogger(__name__)


def load_hf_model(path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval()


@torch.inference_mode()
def hf_static(model, reqs: list[BenchRequest], batch_size: int = 16, pad_id: int = 0) -> tuple[int, float]:
    """Left-padded batches of `batch_size`, each generating its longest output greedily.

    Returns (useful output tokens, seconds): tokens past a request's own length are waste.
    """
    started = time.perf_counter()
    useful = 0
    for i in range(0, len(reqs), batch_size):
        batch = reqs[i:i + batch_size]
        width = max(len(r.prompt_token_ids) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):
            ids[row, width - len(r.prompt_token_ids):] = torch.tensor(r.prompt_token_ids)
            mask[row, width - len(r.prompt_token_ids):] = 1
        longest = max(r.output_len for r in batch)
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=longest,
                       min_new_tokens=longest, do_sample=False, pad_token_id=pad_id)
        useful += sum(r.output_len for r in batch)
    return useful, time.perf_counter() - started


def hf_continuous(model, reqs: list[BenchRequest]) -> tuple[int, float] | None:
    """transformers' continuous batching with per-request output lengths; None if unavailable.

    NOTE: not under inference_mode: the manager's thread updates tensors made here in place.
    """
    if not hasattr(model, "continuous_batching_context_manager"):
        return None
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=max(r.output_len for r in reqs),
                              eos_token_id=None, pad_token_id=0)
    started = time.perf_counter()
    produced = 0
    with model.continuous_batching_context_manager(generation_config=config, block=True,
                                                   timeout=60) as manager:
        started = time.perf_counter()
        for i, r in enumerate(reqs):
            manager.add_request(r.prompt_token_ids, request_id=f"r{i}", max_new_tokens=r.output_len)
        done = 0
        while done < len(reqs):
            result = manager.get_result(timeout=5)
            if result is None:
                if not manager.is_running():
                    raise RuntimeError("transformers continuous batching stopped early")
                continue
            if result.is_finished():
                done += 1
                produced += len(result.generated_tokens)
    return produced, time.perf_counter() - started
