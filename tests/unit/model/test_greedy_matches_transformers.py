"""bastion's greedy tokens equal transformers' `generate`, token for token (float32, CPU)."""
from __future__ import annotations

import random

import pytest

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.sampling_params import SamplingParams

MODELS = ["demo", "qwen3"]


def engine_for(path, **kwargs) -> EngineCore:
    return EngineCore(EngineConfig.from_kwargs(str(path), dtype="float32", **kwargs))


def run(engine: EngineCore, prompts: list[list[int]], max_tokens: int,
        waves: int = 1) -> list[list[int]]:
    """Submit prompts in `waves` (the next wave after the previous one has started)."""
    outputs: dict[str, list[int]] = {}
    per_wave = -(-len(prompts) // waves)
    for w in range(waves):
        for i in range(w * per_wave, min(len(prompts), (w + 1) * per_wave)):
            engine.add_request(str(i), prompts[i], SamplingParams(temperature=0, max_tokens=max_tokens))
        for _ in range(3 if w < waves - 1 else 10_000):
            if not engine.has_unfinished:
                break
            for out in engine.step():
                outputs.setdefault(out.request_id, []).extend(out.new_token_ids)
    return [outputs[str(i)] for i in range(len(prompts))]


def random_prompts(count: int, lengths: tuple[int, int], vocab: int, seed: int,
                   prefix: list[int] | None = None) -> list[list[int]]:
    rng = random.Random(seed)
    return [(prefix or []) + [rng.randrange(3, vocab) for _ in range(rng.randint(*lengths))]
            for _ in range(count)]


def assert_matches(hf_reference, path, prompts, got, max_tokens):
    for i, (prompt, tokens) in enumerate(zip(prompts, got)):
        assert tokens == hf_reference.greedy(path, prompt, max_tokens), f"prompt {i} differs"


def assert_no_leaks(engine: EngineCore) -> None:
    assert not engine.has_unfinished
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert all(b.ref_count == 0 for b in engine.blocks.blocks)


@pytest.mark.parametrize("model", MODELS)
def test_one_prompt(model, model_paths, hf_reference):
    engine = engine_for(model_paths[model])
    prompts = random_prompts(1, (12, 12), 500, seed=1)
    assert_matches(hf_reference, model_paths[model], prompts, run(engine, prompts, 24), 24)
    assert_no_leaks(engine)


@pytest.mark.parametrize("model", MODELS)
def test_many_prompts_of_different_lengths_at_once(model, model_paths, hf_reference):
    engine = engine_for(model_paths[model], num_kv_blocks=512, block_size=8)
    prompts = random_prompts(40, (1, 90), 500, seed=2)   # more than one decode group
    assert_matches(hf_reference, model_paths[model], prompts, run(engine, prompts, 16), 16)
    assert_no_leaks(engine)


@pytest.mark.parametrize("backend", ["torch-sdpa", "cpu-paged"])
@pytest.mark.parametrize("model", MODELS)
def test_shared_prefix_with_cache_hits(model, backend, model_paths, hf_reference, monkeypatch):
    """torch-sdpa gathers the shared blocks once for all rows; cpu-paged reads them in place."""
    from bastion.model.attention import cpu, sdpa

    shared_calls = []
    if backend == "torch-sdpa":
        real = sdpa._decode_shared_prefix
        monkeypatch.setattr(sdpa, "_decode_shared_prefix", lambda *a: shared_calls.append(1) or real(*a))
    else:
        real = cpu.CpuPagedBackend._attend
        monkeypatch.setattr(cpu.CpuPagedBackend, "_attend",
                            lambda self, *a: shared_calls.append(1) or real(self, *a))
    engine = engine_for(model_paths[model], num_kv_blocks=128, block_size=8, attention_backend=backend,
                        enforce_eager=True)
    prefix = random_prompts(1, (45, 45), 500, seed=3)[0]
    prompts = random_prompts(8, (1, 20), 500, seed=4, prefix=prefix)
    got = run(engine, prompts, 12, waves=2)
    assert engine.blocks.hit_tokens >= 4 * 40
    assert shared_calls                               # decodes attended to the prefix once
    assert_matches(hf_reference, model_paths[model], prompts, got, 12)
    assert_no_leaks(engine)


@pytest.mark.parametrize("model", MODELS)
def test_pool_small_enough_to_force_preemption(model, model_paths, hf_reference):
    engine = engine_for(model_paths[model], num_kv_blocks=24, block_size=4, max_model_len=96)
    prompts = random_prompts(8, (10, 30), 500, seed=5)
    got = run(engine, prompts, 24)
    assert engine.scheduler.num_preemptions > 0
    assert_matches(hf_reference, model_paths[model], prompts, got, 24)
    assert_no_leaks(engine)


@pytest.mark.parametrize("model", MODELS)
def test_chunked_prefill_of_a_long_prompt(model, model_paths, hf_reference):
    engine = engine_for(model_paths[model], max_num_batched_tokens=64, max_num_seqs=8,
                        num_kv_blocks=128, block_size=8)
    prompts = random_prompts(1, (300, 300), 500, seed=6) + random_prompts(2, (5, 9), 500, seed=7)
    got = run(engine, prompts, 16)
    assert_matches(hf_reference, model_paths[model], prompts, got, 16)
    assert_no_leaks(engine)
