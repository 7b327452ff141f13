"""The sampler's one-greedy-stream fast path picks what the general path picks, and is taken
only when nothing else applies (logprobs, bias, penalties, min_tokens still go the long way)."""
from __future__ import annotations

import torch

from bastion.engine.request import Request
from bastion.engine.sampler import Sampler, _plain_greedy
from bastion.sampling_params import SamplingParams

EOS = frozenset({3})


def request(**params) -> Request:
    return Request("r", [1, 2, 5], SamplingParams(temperature=0, **params), EOS, 1000)


def test_one_greedy_row_is_its_argmax_and_matches_the_batched_path():
    logits = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    logits[0, 17] = logits.max() + 1
    tokens, logprobs = Sampler()(logits.clone(), [request()])
    assert (tokens, logprobs) == ([17], [None])
    batched, _ = Sampler()(logits.repeat(2, 1), [request(), request()])  # the general path
    assert batched == [17, 17]


def test_a_tie_goes_to_the_first_index_as_on_the_general_path():
    logits = torch.zeros(1, 8)
    assert Sampler()(logits, [request()])[0] == [0] == Sampler()(logits.repeat(2, 1), [request(), request()])[0][:1]


def test_anything_beyond_the_argmax_takes_the_general_path():
    assert _plain_greedy(request())
    assert not _plain_greedy(request(logprobs=2))
    assert not _plain_greedy(request(logit_bias={4: 5.0}))
    assert not _plain_greedy(request(repetition_penalty=1.3))
    assert not _plain_greedy(request(min_tokens=2))
    assert not _plain_greedy(Request("r", [1], SamplingParams(temperature=0.8), EOS, 1000))
    # min_tokens still bans the stop token on the one row: EOS (3) is the argmax but cannot win
    logits = torch.zeros(1, 8)
    logits[0, 3] = 9.0
    tokens, _ = Sampler()(logits, [request(min_tokens=2)])
    assert tokens != [3]
    tokens, logprobs = Sampler()(torch.zeros(1, 8).index_fill_(1, torch.tensor([6]), 2.0), [request(logprobs=1)])
    assert tokens == [6] and logprobs[0].token_id == 6
