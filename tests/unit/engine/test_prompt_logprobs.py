"""Prompt logprobs in the engine: equal to transformers' float32 log-softmax, over chunked
prefill, beside requests that do not ask, with the prefix cache warm and cold."""
from __future__ import annotations

import pytest
import torch

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.engine.outputs import FinishReason
from bastion.engine.prompt_logprobs import PromptLogprobs
from bastion.sampling_params import SamplingParams

PROMPT = [1, 87, 402, 19, 2250, 11, 640, 93, 1024, 7, 388, 45, 1290, 66, 5, 731, 208, 3000, 12, 99, 4]
OTHER = [1, 300, 301, 302, 303, 304, 305, 306, 307]
TOP = 3


def reference(model_dir, prompt: list[int]) -> torch.Tensor:
    """transformers' float32 log-softmax over the vocabulary at every prompt position [P, V]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)


@pytest.fixture(scope="module")
def expected(demo_model) -> torch.Tensor:
    return reference(demo_model, PROMPT)


def make_engine(demo_model, **kwargs) -> EngineCore:
    kwargs = {"dtype": "float32", "num_kv_blocks": 128, "block_size": 4, **kwargs}
    return EngineCore(EngineConfig.from_kwargs(str(demo_model), **kwargs))


@pytest.fixture(scope="module")
def chunked(demo_model) -> EngineCore:
    """Chunks of 8 tokens: PROMPT's prefill takes three steps."""
    return make_engine(demo_model, max_num_batched_tokens=8, max_num_seqs=4)


def run(engine: EngineCore) -> dict[tuple[str, int], list]:
    deltas: dict[tuple[str, int], list] = {}
    while engine.has_unfinished:
        for d in engine.step():
            deltas.setdefault((d.request_id, d.index), []).append(d)
    return deltas


def check(entries, expected: torch.Tensor, prompt: list[int], top: int) -> None:
    """Entry t holds token t's log-probability given the tokens before it (position t - 1)."""
    assert len(entries) == len(prompt) and entries[0] is None
    for t, entry in enumerate(entries[1:], start=1):
        row = expected[t - 1]
        assert entry.token_id == prompt[t]
        assert abs(entry.logprob - float(row[prompt[t]])) < 1e-4, (t, entry.logprob, float(row[prompt[t]]))
        assert entry.rank == int((row > row[prompt[t]]).sum()) + 1
        assert len(entry.top) == top
        ids, values = zip(*entry.top) if top else ((), ())
        assert torch.allclose(torch.tensor(values), row.topk(top).values, atol=1e-4) if top else True
        assert all(abs(float(row[i]) - v) < 1e-4 for i, v in zip(ids, values))


def test_the_collector_scores_each_token_once_in_order():
    c = PromptLogprobs(5, 2)
    assert list(c.wanted(0, 3)) == [1, 2, 3] and c.take() is None
    c.add(1, ["a", "b", "c"])
    assert list(c.wanted(0, 3)) == [] and list(c.wanted(3, 5)) == [4]  # recomputed positions: skipped
    c.add(4, ["d"])
    assert c.complete and c.take() == [None, "a", "b", "c", "d"] and c.take() is None


def test_chunked_prefill_scores_every_prompt_token_like_transformers(chunked, expected):
    chunked.add_request("p", PROMPT, SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=TOP))
    deltas = run(chunked)[("p", 0)]
    assert deltas[0].prompt_logprobs is not None and all(d.prompt_logprobs is None for d in deltas[1:])
    check(deltas[0].prompt_logprobs, expected, PROMPT, TOP)
    assert len(sum((d.new_token_ids for d in deltas), [])) == 2


def test_max_tokens_zero_scores_the_prompt_and_generates_nothing(chunked, expected):
    chunked.add_request("z", PROMPT, SamplingParams(max_tokens=0, prompt_logprobs=0))
    (delta,) = run(chunked)[("z", 0)]
    assert delta.new_token_ids == [] and delta.finish_reason is FinishReason.LENGTH
    check(delta.prompt_logprobs, expected, PROMPT, 0)
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        SamplingParams(max_tokens=0)


def test_requests_that_ask_and_that_do_not_share_steps(demo_model, expected):
    engine = make_engine(demo_model, max_num_batched_tokens=64, max_num_seqs=8)
    engine.add_request("alone", OTHER, SamplingParams(temperature=0, max_tokens=6))
    alone = [t for d in run(engine)[("alone", 0)] for t in d.new_token_ids]
    engine.add_request("plain", OTHER, SamplingParams(temperature=0, max_tokens=6))
    engine.add_request("ask", PROMPT, SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=1))
    engine.add_request("score", PROMPT, SamplingParams(max_tokens=0, prompt_logprobs=2))
    engine.add_request("n2", PROMPT, SamplingParams(n=2, temperature=0, max_tokens=2, prompt_logprobs=TOP))
    first = engine.step()
    assert {d.request_id for d in first} == {"plain", "ask", "score", "n2"}  # one step for all
    deltas = run(engine)
    for d in first:
        deltas.setdefault((d.request_id, d.index), []).insert(0, d)
    assert [t for d in deltas[("plain", 0)] for t in d.new_token_ids] == alone
    assert all(d.prompt_logprobs is None for d in deltas[("plain", 0)])
    check(deltas[("ask", 0)][0].prompt_logprobs, expected, PROMPT, 1)
    check(deltas[("score", 0)][0].prompt_logprobs, expected, PROMPT, 2)
    check(deltas[("n2", 0)][0].prompt_logprobs, expected, PROMPT, TOP)
    assert all(d.prompt_logprobs is None for d in deltas[("n2", 1)])  # the siblings share the first's


def test_a_warm_prefix_cache_is_bypassed_and_still_warmed(demo_model, expected):
    engine = make_engine(demo_model)
    engine.add_request("warm", PROMPT, SamplingParams(temperature=0, max_tokens=1))
    assert run(engine)[("warm", 0)][0].num_cached_tokens == 0
    engine.add_request("hit", PROMPT, SamplingParams(temperature=0, max_tokens=1))
    assert run(engine)[("hit", 0)][0].num_cached_tokens == 20  # the cache is warm
    engine.add_request("ask", PROMPT, SamplingParams(max_tokens=0, prompt_logprobs=TOP))
    (delta,) = run(engine)[("ask", 0)]
    assert delta.num_cached_tokens == 0
    check(delta.prompt_logprobs, expected, PROMPT, TOP)


def test_preemption_mid_prompt_does_not_score_twice(demo_model, expected):
    """A pool too small for both: the newer request is preempted and recomputes its prompt."""
    engine = make_engine(demo_model, num_kv_blocks=9, max_num_batched_tokens=8, max_num_seqs=2,
                         enable_prefix_caching=False)
    engine.add_request("a", PROMPT, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True,
                                                   prompt_logprobs=2))
    engine.add_request("b", PROMPT, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True,
                                                   prompt_logprobs=2))
    deltas = run(engine)
    assert engine.scheduler.num_preemptions > 0
    for rid in ("a", "b"):
        with_logprobs = [d for d in deltas[(rid, 0)] if d.prompt_logprobs is not None]
        assert len(with_logprobs) == 1
        check(with_logprobs[0].prompt_logprobs, expected, PROMPT, 2)


def test_prompt_rows_reduced_slice_by_slice_equal_one_whole_reduction():
    """Two sampling rows then seven prompt rows, through the head three rows at a time."""
    from bastion.engine.prompt_logprobs import PromptRows, logit_slices, logits_and_scores

    torch.manual_seed(0)
    head = torch.randn(50, 8)
    rows = torch.randn(9, 8)
    calls = []

    def compute_logits(part):
        calls.append(part.shape[0])
        return part @ head.T
    a, b = PromptLogprobs(5, 2), PromptLogprobs(4, 1)  # four and three tokens to score
    ids = list(range(10, 15)), list(range(20, 24))
    prompt = PromptRows.build([(a, range(1, 5), ids[0]), (b, range(1, 4), ids[1])], torch.device("cpu"))
    logits = logits_and_scores(compute_logits, rows, 2, 3, prompt)
    assert calls == [3, 3, 3] == [len(p) for p in logit_slices(rows, 3)]
    assert torch.allclose(logits, rows[:2] @ head.T)
    whole = torch.log_softmax(rows[2:] @ head.T, dim=-1)
    scored = a.take()[1:] + b.take()[1:]
    for row, entry, collector_top in zip(whole, scored, [2] * 4 + [1] * 3):
        assert abs(entry.logprob - float(row[entry.token_id])) < 1e-5
        assert [t for t, _ in entry.top] == row.topk(collector_top).indices.tolist()


def test_two_tensor_parallel_workers_score_the_prompt_as_one(demo_model, expected):
    """The LM head split over two worker processes: both put the prompt rows through it alike."""
    engine = make_engine(demo_model, tensor_parallel_size=2, max_num_batched_tokens=8, max_num_seqs=4)
    try:
        engine.add_request("plain", OTHER, SamplingParams(temperature=0, max_tokens=3))
        engine.add_request("tp", PROMPT, SamplingParams(max_tokens=0, prompt_logprobs=TOP))
        deltas = run(engine)
        check(deltas[("tp", 0)][0].prompt_logprobs, expected, PROMPT, TOP)
        assert sum(len(d.new_token_ids) for d in deltas[("plain", 0)]) == 3
    finally:
        engine.close()
