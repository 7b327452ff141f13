"""Sampling: seeds, n > 1, logprobs, penalties, min_tokens, stop ids and finish reasons."""
from __future__ import annotations

import pytest
import torch

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.engine.outputs import FinishReason
from bastion.engine.request import Request
from bastion.engine.sampler import apply_penalties
from bastion.sampling_params import SamplingParams

PROMPT = [5, 17, 99, 23, 42, 8, 300, 12, 77]


@pytest.fixture(scope="module")
def engine(tiny_qwen3) -> EngineCore:
    return EngineCore(EngineConfig.from_kwargs(str(tiny_qwen3), dtype="float32",
                                               num_kv_blocks=512, block_size=4))


def collect(engine: EngineCore) -> dict[tuple[str, int], dict]:
    seqs: dict[tuple[str, int], dict] = {}
    while engine.has_unfinished:
        for out in engine.step():
            seq = seqs.setdefault((out.request_id, out.index), {"tokens": [], "logprobs": []})
            seq["tokens"] += out.new_token_ids
            seq["logprobs"] += out.new_logprobs
            if out.finish_reason:
                seq["reason"] = out.finish_reason
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    return seqs


def generate(engine, prompt, **params) -> dict:
    engine.add_request("one", prompt, SamplingParams(**params))
    return collect(engine)[("one", 0)]


def test_seeded_sampling_is_the_same_alone_and_in_a_busy_batch(engine):
    params = dict(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=20)
    alone = generate(engine, PROMPT, **params)["tokens"]
    for i in range(12):
        busy = [(j * 7 + i) % 500 + 3 for j in range(5 + 9 * i)]
        engine.add_request(f"busy{i}", busy, SamplingParams(temperature=0.8, max_tokens=25 + i))
    engine.add_request("seeded", PROMPT, SamplingParams(**params))
    in_batch = collect(engine)[("seeded", 0)]["tokens"]
    assert alone == in_batch
    assert generate(engine, PROMPT, **{**params, "seed": 99})["tokens"] != alone


def test_n_sequences_share_the_prompt_blocks(engine):
    engine.blocks.reset_prefix_cache()
    hits_before = engine.blocks.hit_tokens
    prompt = list(range(40, 73))                      # 33 tokens: 8 full blocks of 4
    engine.add_request("par", prompt, SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=8))
    seqs = collect(engine)
    outs = [seqs[("par", i)]["tokens"] for i in range(4)]
    assert all(len(o) == 8 for o in outs)
    assert len({tuple(o) for o in outs}) > 1          # siblings sample differently
    assert engine.blocks.hit_tokens - hits_before == 3 * 32


def test_logprobs_of_chosen_and_top_tokens(engine):
    seq = generate(engine, PROMPT, temperature=0, max_tokens=5, logprobs=3)
    assert len(seq["logprobs"]) == 5
    for token, lp in zip(seq["tokens"], seq["logprobs"]):
        assert lp.token_id == token and lp.rank == 1
        assert len(lp.top) == 3 and lp.top[0] == (token, pytest.approx(lp.logprob))
        assert lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1] and lp.logprob <= 0


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    greedy = generate(engine, PROMPT, temperature=0, max_tokens=10)["tokens"]
    assert generate(engine, PROMPT, temperature=1.5, top_k=1, max_tokens=10)["tokens"] == greedy
    assert generate(engine, PROMPT, temperature=1.0, top_p=1e-6, max_tokens=10)["tokens"] == greedy
    assert generate(engine, PROMPT, temperature=1.0, min_p=1.0, max_tokens=10)["tokens"] == greedy


def test_stop_token_ids_min_tokens_and_max_tokens(engine):
    greedy = generate(engine, PROMPT, temperature=0, max_tokens=10)
    assert greedy["reason"] is FinishReason.LENGTH and len(greedy["tokens"]) == 10
    first = greedy["tokens"][0]
    stopped = generate(engine, PROMPT, temperature=0, max_tokens=10, stop_token_ids=[first])
    assert stopped["tokens"] == [first] and stopped["reason"] is FinishReason.STOP
    held = generate(engine, PROMPT, temperature=0, max_tokens=10, stop_token_ids=[first], min_tokens=3)
    assert first not in held["tokens"][:3]


def test_eos_stops_unless_ignored(engine):
    eos = next(iter(engine.eos_token_ids))
    first = generate(engine, PROMPT, temperature=0, max_tokens=1)["tokens"][0]
    engine.eos_token_ids = frozenset({first})         # make EOS the model's favourite token
    try:
        assert generate(engine, PROMPT, temperature=0, max_tokens=6)["reason"] is FinishReason.STOP
        ignored = generate(engine, PROMPT, temperature=0, max_tokens=6, ignore_eos=True)
        assert ignored["reason"] is FinishReason.LENGTH and len(ignored["tokens"]) == 6
    finally:
        engine.eos_token_ids = frozenset({eos})


def repeats(prompt: list[int], tokens: list[int]) -> int:
    """How many generated tokens had already appeared (in the prompt or earlier output)."""
    seen, count = set(prompt), 0
    for t in tokens:
        count += t in seen
        seen.add(t)
    return count


def test_repetition_and_presence_penalties_discourage_repeats(engine):
    plain = generate(engine, PROMPT, temperature=0, max_tokens=30)["tokens"]
    rep = generate(engine, PROMPT, temperature=0, max_tokens=30, repetition_penalty=5.0)["tokens"]
    presence = generate(engine, PROMPT, temperature=0, max_tokens=30, presence_penalty=2.0,
                        frequency_penalty=2.0)["tokens"]
    assert repeats(PROMPT, plain) >= 5
    assert repeats(PROMPT, rep) < repeats(PROMPT, plain)
    assert repeats([], presence) < repeats([], plain)


def test_penalties_arithmetic():
    req = Request("r", [1, 2], SamplingParams(presence_penalty=0.5, frequency_penalty=0.25,
                                              repetition_penalty=2.0), frozenset(), 100)
    req.all_token_ids += [3, 3, 1]
    logits = torch.tensor([[1.0, 2.0, -2.0, 4.0, 1.0]])
    out = apply_penalties(logits.clone(), [req])
    # token 1: rep 2.0/2 = 1.0, output count 1 -> 1.0 - 0.25 - 0.5 = 0.25
    # token 2: rep -2.0*2 = -4.0 (prompt only, no presence/frequency)
    # token 3: rep 4.0/2 = 2.0, count 2 -> 2.0 - 0.5 - 0.5 = 1.0
    assert out.tolist() == [[1.0, 0.25, -4.0, 1.0, 1.0]]


def test_abort_frees_blocks_and_reports_abort(engine):
    engine.add_request("gone", PROMPT, SamplingParams(temperature=0, max_tokens=50))
    engine.step()
    assert engine.blocks.num_free_blocks < engine.blocks.num_blocks
    outs = engine.abort_request("gone")
    assert [o.finish_reason for o in outs] == [FinishReason.ABORT]
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks and not engine.has_unfinished
