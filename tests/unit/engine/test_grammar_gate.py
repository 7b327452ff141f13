"""A grammar that starts after a trigger (`grammar_starts_after`), in the engine on the demo
model: the tokens up to the trigger are exactly the free run's, the rest matches the schema;
a trigger never written leaves the output free; one- and two-token triggers; n > 1."""
from __future__ import annotations

import json

import pytest

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.engine.outputs import FinishReason
from bastion.model.demo import DEMO_MODEL_DIR
from bastion.model.tokenizer import load_tokenizer
from bastion.sampling_params import SamplingParams
from bastion.structured.spec import StructuredOutputs

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "n"],
          "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99}}}
JSON = StructuredOutputs(json=json.dumps(SCHEMA))
PROMPT = "The list type in Python"


@pytest.fixture(scope="module")
def engine() -> EngineCore:
    return EngineCore(EngineConfig.from_kwargs(str(DEMO_MODEL_DIR), dtype="float32", num_kv_blocks=256,
                                               block_size=4, num_threads=1))


@pytest.fixture(scope="module")
def prompt_ids() -> list[int]:
    return load_tokenizer(DEMO_MODEL_DIR)(PROMPT).input_ids


def run(engine: EngineCore, prompt_ids: list[int], params: SamplingParams) -> dict[int, tuple[list[int], FinishReason]]:
    engine.add_request("r", prompt_ids, params)
    tokens, reasons = {}, {}
    while engine.has_unfinished:
        engine.wait_for_grammars(60)
        for out in engine.step():
            tokens.setdefault(out.index, []).extend(out.new_token_ids)
            if out.finish_reason is not None:
                reasons[out.index] = out.finish_reason
    assert not engine.take_errors()
    return {i: (tokens[i], reasons[i]) for i in tokens}


def free_run(engine, prompt_ids) -> list[int]:
    return run(engine, prompt_ids, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0][0]


def check_answer(ids: list[int], reason: FinishReason) -> None:
    value = json.loads(load_tokenizer(DEMO_MODEL_DIR).decode(ids, skip_special_tokens=True))
    assert reason is FinishReason.STOP and set(value) == {"ok", "n"} and isinstance(value["ok"], bool)


def trigger_at(free: list[int], width: int) -> int:
    """A position past the first few tokens where `width` tokens first appear in the free run."""
    return next(k for k in range(3, len(free) - width)
                if all(free[j:j + width] != free[k:k + width] for j in range(k)))


@pytest.mark.parametrize("width", [1, 2])
def test_the_grammar_starts_after_the_trigger_and_the_tokens_before_are_free(engine, prompt_ids, width):
    free = free_run(engine, prompt_ids)
    k = trigger_at(free, width)
    trigger = free[k:k + width]
    params = SamplingParams(temperature=0, max_tokens=80, structured_outputs=JSON, grammar_starts_after=trigger)
    [(out, reason)] = run(engine, prompt_ids, params).values()
    assert out[:k + width] == free[:k + width]
    check_answer(out[k + width:], reason)


def test_without_a_trigger_the_grammar_constrains_from_the_first_token(engine, prompt_ids):
    [(out, reason)] = run(engine, prompt_ids, SamplingParams(temperature=0, max_tokens=80,
                                                             structured_outputs=JSON)).values()
    check_answer(out, reason)
    assert out[:3] != free_run(engine, prompt_ids)[:3]


def test_a_trigger_never_written_leaves_the_output_free(engine, prompt_ids):
    free = free_run(engine, prompt_ids)
    absent = next(t for t in range(6, 4096) if t not in free)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, structured_outputs=JSON,
                            grammar_starts_after=[absent])
    [(out, reason)] = run(engine, prompt_ids, params).values()
    assert out == free and reason is FinishReason.LENGTH


def test_each_sequence_has_its_own_gate(engine, prompt_ids):
    free = free_run(engine, prompt_ids)
    k = trigger_at(free, 1)
    params = SamplingParams(n=3, temperature=0, max_tokens=80, structured_outputs=JSON,
                            grammar_starts_after=[free[k]])
    outs = run(engine, prompt_ids, params)
    assert sorted(outs) == [0, 1, 2]
    for out, reason in outs.values():
        assert out[:k + 1] == free[:k + 1]
        check_answer(out[k + 1:], reason)


@pytest.mark.parametrize("fields", [dict(grammar_starts_after=[1]), dict(structured_outputs=JSON, grammar_starts_after=[]),
                                    dict(structured_outputs=JSON, grammar_starts_after=[-1]),
                                    dict(structured_outputs=JSON, grammar_starts_after=list(range(17)))])
def test_a_bad_trigger_is_refused(fields):
    with pytest.raises(ValueError, match="grammar_starts_after"):
        SamplingParams(**fields)
