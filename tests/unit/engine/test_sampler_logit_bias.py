"""logit_bias in the sampler: per row, batch-safe, +100 forces, -100 bans, logprobs stay the
model's own; its bounds in SamplingParams and the engine's vocabulary check."""
from __future__ import annotations

import math

import pytest
import torch

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.engine.request import Request
from bastion.engine.sampler import Sampler
from bastion.sampling_params import MAX_LOGIT_BIAS, SamplingParams

VOCAB = 50
EOS = frozenset({2})


def request(**params) -> Request:
    return Request("r", [1, 3, 5], SamplingParams(**params), EOS, 1000)


def logits_for(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_rows_force_ban_and_leave_the_others_alone():
    logits = logits_for(4)
    best = logits.argmax(dim=-1).tolist()
    second = logits.topk(2, dim=-1).indices[:, 1].tolist()
    forced = (best[1] + 7) % VOCAB
    reqs = [request(temperature=0), request(temperature=0, logit_bias={forced: 100}),
            request(temperature=0), request(temperature=0, logit_bias={best[3]: -100})]
    tokens, _ = Sampler()(logits.clone(), reqs)
    assert tokens == [best[0], forced, best[2], second[3]]


def test_a_small_bias_shifts_only_its_own_row():
    logits = torch.zeros(2, VOCAB)
    logits[:, 10] = 1.0
    reqs = [request(temperature=0, logit_bias={11: 2.5}), request(temperature=0)]
    assert Sampler()(logits.clone(), reqs)[0] == [11, 10]


def test_random_rows_without_bias_draw_the_same_tokens_beside_a_biased_row():
    logits = logits_for(3, seed=1)
    plain = [request(temperature=1.0), request(temperature=1.0, seed=7), request(temperature=1.0)]
    biased = [request(temperature=1.0), request(temperature=1.0, seed=7),
              request(temperature=1.0, logit_bias={4: 100, 9: -100})]
    want, _ = Sampler(seed=3)(logits.clone(), plain)
    got, _ = Sampler(seed=3)(logits.clone(), biased)
    assert got[:2] == want[:2] and got[2] == 4


def test_forced_tokens_are_drawn_under_temperature_and_top_p():
    reqs = [request(temperature=1.3, top_p=0.9, top_k=20, logit_bias={5: 100}) for _ in range(8)]
    tokens, _ = Sampler(seed=11)(logits_for(8, seed=2), reqs)
    assert tokens == [5] * 8


def test_logprobs_are_the_models_own_not_the_biased_ones():
    logits = logits_for(1, seed=4)
    banned = int(logits.argmax())
    tokens, logprobs = Sampler()(logits.clone(), [request(temperature=0, logprobs=2, logit_bias={banned: -100})])
    raw = torch.log_softmax(logits[0], dim=-1)
    (lp,) = logprobs
    assert tokens[0] != banned and lp.token_id == tokens[0] and lp.rank == 2
    assert lp.logprob == pytest.approx(float(raw[tokens[0]]))
    assert lp.top[0] == (banned, pytest.approx(float(raw[banned])))


def test_min_tokens_still_holds_back_eos_under_a_positive_bias():
    tokens, _ = Sampler()(logits_for(1), [request(temperature=0, min_tokens=3, logit_bias={2: 100})])
    assert tokens[0] != 2


@pytest.mark.parametrize("bias, message", [
    ({1: 100.5}, "logit_bias values must be in [-100, 100]"),
    ({1: -101}, "logit_bias values must be in [-100, 100]"),
    ({1: math.nan}, "logit_bias values must be in [-100, 100]"),
    ({1: True}, "logit_bias values must be in [-100, 100]"),
    ({-1: 1.0}, "logit_bias keys must be token ids"),
    ({"5": 1.0}, "logit_bias keys must be token ids"),
    ({i: 1.0 for i in range(MAX_LOGIT_BIAS + 1)}, f"at most {MAX_LOGIT_BIAS}"),
    ([1, 2], "logit_bias must map token ids to biases"),
])
def test_bounds_of_logit_bias(bias, message):
    with pytest.raises(ValueError, match="^logit_bias") as caught:
        SamplingParams(logit_bias=bias)
    assert message in str(caught.value)


def test_accepted_biases_are_floats_and_an_empty_map_is_none():
    assert SamplingParams(logit_bias={3: 100, 4: -2}).logit_bias == {3: 100.0, 4: -2.0}
    assert SamplingParams(logit_bias={}).logit_bias is None
    assert len(SamplingParams(logit_bias={i: 1 for i in range(MAX_LOGIT_BIAS)}).logit_bias) == MAX_LOGIT_BIAS


@pytest.fixture(scope="module")
def engine(tiny_qwen3) -> EngineCore:
    return EngineCore(EngineConfig.from_kwargs(str(tiny_qwen3), dtype="float32",
                                               num_kv_blocks=256, block_size=4))


def run(engine: EngineCore, requests: dict[str, SamplingParams]) -> dict[str, list[int]]:
    for rid, params in requests.items():
        engine.add_request(rid, [5, 17, 99, 23, 42], params)
    tokens: dict[str, list[int]] = {rid: [] for rid in requests}
    while engine.has_unfinished:
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
    return tokens


def test_engine_batch_mixing_biased_and_unbiased_requests(engine):
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    alone = run(engine, {"plain": greedy})["plain"]
    got = run(engine, {"plain": greedy,
                       "forced": SamplingParams(temperature=0.9, max_tokens=6, ignore_eos=True,
                                                logit_bias={77: 100}),
                       "banned": SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                                logit_bias={alone[0]: -100})})
    assert got["plain"] == alone
    assert got["forced"] == [77] * 6
    assert got["banned"][0] != alone[0]


def test_engine_refuses_a_bias_outside_the_vocabulary(engine):
    vocab = engine.limits.vocab_size
    with pytest.raises(ValueError, match=f"logit_bias key {vocab} is outside the vocabulary"):
        engine.add_request("x", [1, 2], SamplingParams(logit_bias={vocab: 1.0}))
    assert not engine.has_unfinished
