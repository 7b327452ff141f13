"""Constrained decoding inside the engine, on the demo model: constrained and free rows in one
batch, n > 1, bad grammars, compiles that never stall other requests, preemption, no leaks."""
from __future__ import annotations

import json
import math
import re
import threading

import pytest

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.engine.outputs import FinishReason
from bastion.model.demo import DEMO_MODEL_DIR
from bastion.model.tokenizer import load_tokenizer
from bastion.sampling_params import SamplingParams
from bastion.structured.spec import StructuredOutputs as S

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "ok", "n"],
          "properties": {"name": {"type": "string", "maxLength": 8}, "ok": {"type": "boolean"},
                         "n": {"type": "integer", "minimum": 0, "maximum": 999}}}
EMAIL = r"[a-z]{3,8}@[a-z]{2,5}\.com"
CHOICES = ["yes", "no", "maybe"]


def make_engine(**kw) -> EngineCore:
    args = {"dtype": "float32", "num_kv_blocks": 512, "block_size": 4, "num_threads": 1, **kw}
    return EngineCore(EngineConfig.from_kwargs(str(DEMO_MODEL_DIR), **args))


@pytest.fixture(scope="module")
def engine() -> EngineCore:
    return make_engine()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(DEMO_MODEL_DIR)


def run(engine: EngineCore, requests: dict[str, tuple[str | list[int], SamplingParams]], tok):
    """Add the requests, step to the end; ({(rid, i): (text, reason)}, errors). No blocks leak."""
    for rid, (prompt, params) in requests.items():
        ids = tok(prompt).input_ids if isinstance(prompt, str) else prompt
        engine.add_request(rid, ids, params)
    tokens, reasons, errors = {}, {}, {}
    for _ in range(2000):
        if not engine.has_unfinished:
            break
        engine.wait_for_grammars(60)
        for out in engine.step():
            tokens.setdefault((out.request_id, out.index), []).extend(out.new_token_ids)
            if out.finish_reason is not None:
                reasons[(out.request_id, out.index)] = out.finish_reason
        errors.update((rid, message) for rid, message, _ in engine.take_errors())
    assert not engine.has_unfinished
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    texts = {key: (tok.decode(ids, skip_special_tokens=True), reasons.get(key), ids)
             for key, ids in tokens.items()}
    return texts, errors


def check_schema(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"name", "ok", "n"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 8
    assert isinstance(value["ok"], bool) and type(value["n"]) is int and 0 <= value["n"] <= 999


def test_constrained_and_free_rows_share_a_batch(engine, tok):
    free = SamplingParams(temperature=0, max_tokens=12)
    texts, errors = run(engine, {
        "json": ("The record is", SamplingParams(temperature=0, max_tokens=80, structured_outputs=S(json=json.dumps(SCHEMA)))),
        "free": ("def foo():", free),
        "regex": ("Mail me at", SamplingParams(temperature=0.8, seed=1, max_tokens=40, structured_outputs=S(regex=EMAIL))),
        "choice": ("Is it?", SamplingParams(temperature=0, max_tokens=10, structured_outputs=S(choice=CHOICES))),
        "obj": ("{", SamplingParams(temperature=0, max_tokens=60, structured_outputs=S(json_object=True))),
    }, tok)
    assert not errors
    check_schema(texts["json", 0][0])
    assert texts["json", 0][1] is FinishReason.STOP
    assert re.fullmatch(EMAIL, texts["regex", 0][0]) and texts["regex", 0][1] is FinishReason.STOP
    assert texts["choice", 0][0] in CHOICES and texts["choice", 0][1] is FinishReason.STOP
    assert texts["free", 0][1] is FinishReason.LENGTH
    alone, _ = run(engine, {"free": ("def foo():", free)}, tok)
    assert alone["free", 0][2] == texts["free", 0][2]  # the grammars did not touch the free row
    if texts["obj", 0][1] is FinishReason.STOP:
        assert isinstance(json.loads(texts["obj", 0][0]), dict)


def test_each_of_n_sequences_has_its_own_matcher(engine, tok):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=40, structured_outputs=S(regex=EMAIL))
    texts, errors = run(engine, {"n": ("Contact:", params)}, tok)
    assert not errors and len(texts) == 3
    assert all(re.fullmatch(EMAIL, text) and reason is FinishReason.STOP for text, reason, _ in texts.values())
    assert len({text for text, _, _ in texts.values()}) > 1


def test_logprobs_come_from_the_constrained_distribution(engine, tok):
    params = SamplingParams(temperature=0, max_tokens=5, logprobs=20, structured_outputs=S(choice=["yes", "no"]))
    engine.add_request("lp", tok("Answer:").input_ids, params)
    deltas = []
    while engine.has_unfinished:
        engine.wait_for_grammars(60)
        deltas += engine.step()
    first = deltas[0].new_logprobs[0]
    allowed = [t for t, _ in first.top]
    assert 0 < len(allowed) < 20  # only the grammar's tokens, no -inf entries
    assert all("yes".startswith(tok.decode([t])) or "no".startswith(tok.decode([t])) for t in allowed)
    assert math.isclose(sum(math.exp(lp) for _, lp in first.top), 1.0, rel_tol=1e-4)


def test_min_tokens_lets_the_grammar_decide(engine, tok):
    params = SamplingParams(temperature=0, max_tokens=10, min_tokens=8, structured_outputs=S(choice=CHOICES))
    texts, errors = run(engine, {"m": ("Is it?", params)}, tok)
    assert not errors and texts["m", 0][0] in CHOICES and texts["m", 0][1] is FinishReason.STOP


def test_a_bad_grammar_ends_only_its_request(engine, tok):
    texts, errors = run(engine, {
        "bad": ("x", SamplingParams(n=2, structured_outputs=S(json='{"type": "frob"}'))),
        "loop": ("x", SamplingParams(structured_outputs=S(json='{"$ref": "#"}'))),
        "good": ("x", SamplingParams(temperature=0, max_tokens=10, structured_outputs=S(choice=CHOICES))),
    }, tok)
    assert errors == {"bad": "structured outputs: Invalid type: frob",
                      "loop": errors["loop"]} and "no base case" in errors["loop"]
    assert texts["good", 0][0] in CHOICES and ("bad", 0) not in texts


def gate_compiles(engine: EngineCore, monkeypatch) -> threading.Event:
    """Make every compile wait for the returned event (a slow grammar, without the wall clock)."""
    gate = threading.Event()
    compile_ = engine.grammars._compile
    monkeypatch.setattr(engine.grammars, "_compile", lambda spec: (gate.wait(60), compile_(spec))[1])
    return gate


def test_free_requests_finish_while_a_compile_is_still_running(monkeypatch, tok):
    engine = make_engine()
    gate = gate_compiles(engine, monkeypatch)
    woken = threading.Event()
    engine.on_grammar_done = woken.set
    engine.add_request("slow", tok("Is it?").input_ids,
                       SamplingParams(temperature=0, max_tokens=10, structured_outputs=S(choice=CHOICES)))
    engine.add_request("free", tok("def").input_ids, SamplingParams(temperature=0, max_tokens=6))
    finished = []
    while engine.has_work:
        finished += [d.request_id for d in engine.step() if d.finished]
    assert finished == ["free"] and engine.has_unfinished and not engine.has_work
    assert not woken.is_set()
    gate.set()
    assert woken.wait(60)
    texts, errors = run(engine, {}, tok)
    assert texts["slow", 0][0] in CHOICES and not errors


def test_a_request_aborted_while_compiling_ends_at_once(monkeypatch, tok):
    engine = make_engine()
    gate = gate_compiles(engine, monkeypatch)
    engine.add_request("a", [5, 6, 7], SamplingParams(n=2, structured_outputs=S(regex="[0-9]+")))
    assert [d.index for d in engine.abort_request("a", 1)] == [1]
    assert [d.finish_reason for d in engine.abort_request("a")] == [FinishReason.ABORT]
    assert not engine.has_unfinished
    gate.set()
    engine.wait_for_grammars(60)
    assert engine.step() == [] and engine.take_errors() == []


def test_a_compile_over_the_time_bound_fails_the_request(monkeypatch, tok):
    engine = make_engine(structured_output_compile_timeout=0.05)
    gate = gate_compiles(engine, monkeypatch)
    try:
        texts, errors = run(engine, {"t": ("x", SamplingParams(structured_outputs=S(regex="[0-9]+")))}, tok)
    finally:
        gate.set()
    assert errors == {"t": "structured outputs: the grammar did not compile within 0.05 s "
                           "(--structured-output-compile-timeout)"} and not texts


def test_preemption_keeps_each_matcher_in_step(tok):
    requests = {f"r{i}": (prompt, SamplingParams(temperature=0, max_tokens=40, structured_outputs=spec))
                for i, (prompt, spec) in enumerate([
                    ("The record is", S(json=json.dumps(SCHEMA))), ("Mail me at", S(regex=EMAIL)),
                    ("The data:", S(json=json.dumps(SCHEMA))), ("Write to", S(regex=EMAIL))])}
    relaxed, _ = run(make_engine(), requests, tok)
    tight = make_engine(num_kv_blocks=8)  # 32 tokens for four requests of about 25
    pressed, errors = run(tight, requests, tok)
    assert tight.scheduler.num_preemptions > 0 and not errors
    assert pressed == relaxed
    for rid in ("r0", "r2"):
        check_schema(pressed[rid, 0][0])
    assert all(re.fullmatch(EMAIL, pressed[rid, 0][0]) for rid in ("r1", "r3"))


def test_the_offline_llm_raises_for_a_grammar_that_does_not_compile_and_keeps_working():
    from bastion.engine.llm import LLM
    llm = LLM(dtype="float32", num_kv_blocks=64, block_size=4, num_threads=1)
    bad = SamplingParams(structured_outputs=S(json='{"type": "frob"}'))
    with pytest.raises(ValueError, match="^structured outputs: Invalid type: frob$"):
        llm.generate(["a", "b"], [SamplingParams(max_tokens=50), bad])
    assert not llm.engine.has_unfinished
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_blocks
    (out,) = llm.generate("Is it?", SamplingParams(temperature=0, max_tokens=5, structured_outputs=S(choice=CHOICES)))
    assert out.outputs[0].text in CHOICES and out.outputs[0].finish_reason == "stop"
