"""Bad requests get clear ValueErrors and leave everything else untouched."""
from __future__ import annotations

import pytest

from bastion.config.engine import CacheConfig, EngineConfig, SchedulerConfig, parse_bytes
from bastion.engine.core import EngineCore
from bastion.sampling_params import SamplingParams


@pytest.mark.parametrize("kwargs, message", [
    ({"max_tokens": 0}, "max_tokens must be at least 1, got 0"),
    ({"max_tokens": -5}, "max_tokens must be at least 1, got -5"),
    ({"temperature": -0.1}, "temperature must be non-negative"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
    ({"top_k": 0}, "top_k must be -1"),
    ({"n": 0}, "n must be at least 1"),
    ({"min_tokens": 9, "max_tokens": 3}, "min_tokens .9. cannot exceed max_tokens .3."),
    ({"logprobs": 21}, "logprobs must be between 0 and 20"),
])
def test_invalid_sampling_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("factory, message", [
    (lambda: SchedulerConfig(max_num_seqs=0), "--max-num-seqs must be at least 1"),
    (lambda: SchedulerConfig(max_num_batched_tokens=8, max_num_seqs=16), "cannot exceed"),
    (lambda: CacheConfig(block_size=6), "--block-size must be a power of two"),
    (lambda: CacheConfig(kv_cache_memory=1, num_kv_blocks=1), "not both"),
    (lambda: parse_bytes("12 parsecs"), "invalid size"),
])
def test_invalid_engine_config(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_sizes_with_units():
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("1024") == 1024


@pytest.fixture(scope="module")
def engine(tiny_qwen3) -> EngineCore:
    return EngineCore(EngineConfig.from_kwargs(str(tiny_qwen3), dtype="float32", num_kv_blocks=64,
                                               block_size=4, max_model_len=64))


def test_bad_prompts_are_rejected_and_good_ones_unaffected(engine):
    good = [5, 6, 7, 8]
    engine.add_request("good", good, SamplingParams(temperature=0, max_tokens=6))
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request("empty", [], SamplingParams())
    with pytest.raises(ValueError, match="prompt has 64 tokens but the model's context is 64 tokens"):
        engine.add_request("long", [5] * 64, SamplingParams())
    with pytest.raises(ValueError, match=r"token ids must be integers in \[0, 512\)"):
        engine.add_request("oov", [5, 100000], SamplingParams())
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("good", good, SamplingParams())
    tokens = []
    while engine.has_unfinished:
        tokens += [t for o in engine.step() for t in o.new_token_ids]
    engine.add_request("again", good, SamplingParams(temperature=0, max_tokens=6))
    again = []
    while engine.has_unfinished:
        again += [t for o in engine.step() for t in o.new_token_ids]
    assert len(tokens) == 6 and tokens == again
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_generation_stops_at_the_context_length(engine):
    engine.add_request("fill", list(range(3, 60)), SamplingParams(temperature=0, max_tokens=None))
    outs = []
    while engine.has_unfinished:
        outs += engine.step()
    assert sum(len(o.new_token_ids) for o in outs) == 64 - 57
    assert outs[-1].finish_reason.value == "length"


def test_max_model_len_must_fit_the_pool(tiny_qwen3):
    from bastion.model.arch import ModelLoadError

    with pytest.raises(ModelLoadError, match="--max-model-len 512 does not fit the KV pool of 64 tokens"):
        EngineCore(EngineConfig.from_kwargs(str(tiny_qwen3), num_kv_blocks=16, block_size=4,
                                            max_model_len=512))
