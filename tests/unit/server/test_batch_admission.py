"""Batched prompts on /v1/completions in the front end's terms: the body's prompts, choices
numbered prompt-major, usage summed, deltas interleaved, the bound and errors naming the prompt."""
from __future__ import annotations

import asyncio

import pytest

from bastion.config.security import Limits
from bastion.config.server import ServerConfig
from bastion.model.demo import default_model_path
from bastion.model.tokenizer import load_tokenizer
from bastion.security.principal import Principal
from bastion.server.caller import Caller
from bastion.server.frontend import Frontend
from bastion.server.generation import GenerationBatch, SequenceDelta, SequenceState
from bastion.server.http.errors import APIError
from bastion.server.prompt import TextPrompt, TokenPrompt
from bastion.server.routes.protocol import CompletionRequest

CALLER = Caller.of(Principal("anonymous", None, "default", frozenset({"inference"}), None, Limits()))


def test_a_body_gives_its_prompts_in_order():
    def prompts(p):
        return CompletionRequest(model="m", prompt=p).to_prompts()
    assert prompts("a") == [TextPrompt("a", "prompt")]
    assert prompts([5, 6]) == [TokenPrompt([5, 6], "prompt")]
    assert prompts(["a", "b"]) == [TextPrompt("a", "prompt"), TextPrompt("b", "prompt")]
    assert prompts([[1], [2, 3]]) == [TokenPrompt([1], "prompt"), TokenPrompt([2, 3], "prompt")]
    with pytest.raises(APIError, match="must not be empty"):
        prompts([])
    with pytest.raises(APIError, match="one prompt") as caught:
        CompletionRequest(model="m", prompt=["a", "b"]).to_prompt()
    assert caught.value.param == "prompt"


class FakeGeneration:
    """A started generation as the batch sees it: sequences, deltas, counts, close."""

    def __init__(self, first: int, n: int, prompt: int, steps: list[list[int]], fail: bool = False):
        self.seqs = [SequenceState(first + j, None) for j in range(n)]
        self.prompt_tokens, self.num_cached_tokens, self.steps, self.fail = prompt, 1, steps, fail
        self.completion_tokens, self.closed = 0, False

    async def deltas(self):
        try:
            for step in self.steps:
                await asyncio.sleep(0)
                self.completion_tokens += len(step)
                yield [SequenceDelta(i, f"t{i}", [7], []) for i in step]
            if self.fail:
                raise APIError(503, "rank died")
        finally:
            self.closed = True

    async def close(self):
        self.closed = True


def test_a_batch_numbers_choices_prompt_major_and_sums_usage():
    gens = [FakeGeneration(0, 2, 3, [[0, 1], [0]]), FakeGeneration(2, 2, 4, [[2], [3], [2, 3]])]
    batch = GenerationBatch(gens)
    assert [s.index for s in batch.seqs] == [0, 1, 2, 3]
    tokens = {i: 0 for i in range(4)}

    async def run():
        async for deltas in batch.deltas():
            indices = [d.index for d in deltas]
            assert len(indices) == len(set(indices))  # one choice per index in a chunk
            for d in deltas:
                tokens[d.index] += len(d.token_ids)
    asyncio.run(run())
    assert tokens == {0: 2, 1: 1, 2: 2, 3: 2}
    assert batch.usage() == {"prompt_tokens": 7, "completion_tokens": 7, "total_tokens": 14,
                             "prompt_tokens_details": {"cached_tokens": 2}}
    assert all(g.closed for g in gens)


def test_an_error_in_one_prompt_ends_them_all():
    slow = FakeGeneration(0, 1, 3, [[0]] * 50)
    batch = GenerationBatch([slow, FakeGeneration(1, 1, 3, [[1]], fail=True)])
    with pytest.raises(APIError, match="rank died"):
        asyncio.run(batch.collect())
    assert slow.closed and slow.completion_tokens < 50


@pytest.fixture(scope="module")
def frontend():
    config = ServerConfig(served_model_names=("m",), max_batched_prompts=3)
    tokenizer = load_tokenizer(default_model_path())
    return Frontend(config, None, tokenizer, max_model_len=64, vocab_size=len(tokenizer))


@pytest.mark.parametrize("body, message, param", [
    ({"prompt": ["a"] * 4}, "4 prompts in one request: this server takes at most 3 (--max-batched-prompts)",
     "prompt"),
    ({"prompt": [[1], [1] * 70]}, "prompt 1 of the batch: This model's maximum context length is 64",
     "prompt"),
    ({"prompt": [[1], [2], [1] * 40], "max_tokens": 30}, "prompt 2 of the batch: This model's maximum "
     "context length is 64 tokens. However, you requested 70 tokens", "max_tokens"),
    ({"prompt": [[1], [10**6]]}, "prompt 1 of the batch: token id 1000000 in 'prompt'", "prompt"),
])
def test_batch_errors_name_the_prompt_before_anything_is_admitted(frontend, body, message, param):
    # NOTE: the frontend has no engine client: an error raised after admission would fail otherwise
    with pytest.raises(APIError) as caught:
        asyncio.run(frontend.generate_batch(CompletionRequest(model="m", **body), CALLER))
    assert caught.value.status == 400 and message in caught.value.message
    assert caught.value.param == param


class RecordingLimits:
    """Stands in for the limits client: records the tickets given back."""

    def __init__(self) -> None:
        self.released: list[tuple[int, int]] = []

    def release(self, ticket: int, used: int) -> None:
        self.released.append((ticket, used))


def test_a_batch_is_one_admission_whose_ticket_goes_back_with_its_last_prompt():
    from bastion.security.audit import RequestRecord
    from bastion.server.frontend import Admission

    limits = RecordingLimits()
    record = RequestRecord("r", 0, "POST", "/v1/completions", None, 0.0)
    admission = Admission(limits, 7, record, parts=2)
    first, second = admission.part(), admission.part()
    first(3, 5)
    first(0, 0)  # a second settle (a send cancelled after the generation ended) counts nothing
    assert limits.released == []  # the other prompt still runs: the slots stay taken
    second(4, 6)
    assert limits.released == [(7, 18)]
    assert (record.prompt_tokens, record.completion_tokens) == (7, 11)


def test_a_batch_cut_short_gives_its_ticket_back_with_what_was_used():
    from bastion.server.frontend import Admission

    limits = RecordingLimits()
    admission = Admission(limits, 3, None, parts=3)
    admission.part()(2, 1)
    admission.abandon()
    admission.abandon()
    assert limits.released == [(3, 3)]
