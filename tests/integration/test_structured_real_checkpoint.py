"""Structured outputs on a real checkpoint: SmolLM2-135M-Instruct (49,152-token BPE vocabulary,
ChatML template), built by `tests/support/real_checkpoint.py`, served once for this module.

A real tokenizer is where constrained decoding goes wrong in practice (multi-character tokens
that cross a grammar's boundaries, special tokens, a vocabulary narrower than the logits), so the
same constraints as on the demo model are checked here: the openai SDK's `.parse`,
`response_format`, vLLM's `structured_outputs` on chat and completions, streamed and not, and
SGLang's `/generate`. Each output must end with "stop" and obey its constraint.
"""
from __future__ import annotations

import httpx
import pytest

import structured_cases
from server_process import ServerProcess
from structured_cases import (DATE_REGEX, MAX_TOKENS, PERSON_SCHEMA, SGLANG_CASES, VLLM_CASES,
                              check_fullmatch, check_json_object, check_json_schema)

MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "Describe a programmer as a JSON object with name, age, "
                                        "language and tags."}]
PROMPT = "Describe the value as requested:"


@pytest.fixture(scope="module")
def server(smollm2_checkpoint):
    proc = ServerProcess(str(smollm2_checkpoint), "--served-model-name", MODEL, "--dtype", "bfloat16",
                         "--max-model-len", "1024")
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def client(server):
    return structured_cases.openai_client(server)


def chat(client, stream: bool = False, **kwargs) -> tuple[str, str]:
    return structured_cases.chat(client, MODEL, MESSAGES, stream, **kwargs)


def test_the_checkpoint_is_a_real_instruct_model(client):
    """Guards the fixture: unconstrained, the model answers in English through its template."""
    text, _ = chat(client, max_tokens=24)
    assert sum(w.strip(".,:").lower() in {"the", "a", "is", "and", "name", "age", "of", "to"}
               for w in text.split()) >= 2, text


def test_parse_with_a_pydantic_model_returns_a_parsed_object(client):
    structured_cases.parsed_person(client, MODEL, MESSAGES)


def test_response_format_json_schema_and_json_object(client):
    text, reason = chat(client, response_format={"type": "json_schema", "json_schema": {
        "name": "person", "schema": PERSON_SCHEMA, "strict": True}})
    assert reason == "stop", text
    check_json_schema(text, PERSON_SCHEMA)
    text, reason = chat(client, response_format={"type": "json_object"})
    assert reason == "stop", text
    check_json_object(text)


@pytest.mark.parametrize("case", sorted(VLLM_CASES))
def test_vllm_structured_outputs_on_chat(client, case):
    body, check = VLLM_CASES[case]
    text, reason = chat(client, extra_body={"structured_outputs": body})
    assert reason == "stop", text
    check(text)
    if case in ("json", "regex"):  # multi-character tokens across the grammar's edges, streamed
        assert chat(client, stream=True, extra_body={"structured_outputs": body}) == (text, reason)


def test_vllm_structured_outputs_on_completions(client):
    for body, check in (VLLM_CASES["json"], VLLM_CASES["regex"]):
        choice = client.completions.create(model=MODEL, prompt=PROMPT, temperature=0, max_tokens=MAX_TOKENS,
                                           extra_body={"structured_outputs": body}).choices[0]
        assert choice.finish_reason == "stop", choice.text
        check(choice.text)


@pytest.mark.parametrize("case", sorted(SGLANG_CASES))
def test_sglang_generate_constraints(server, case):
    field, value, check = SGLANG_CASES[case]
    r = httpx.post(f"{server.url}/generate", timeout=300, json={
        "text": PROMPT, "sampling_params": {"temperature": 0, "max_new_tokens": MAX_TOKENS, field: value}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["meta_info"]["finish_reason"]["type"] == "stop", out
    check(out["text"])


def test_sampled_constrained_outputs_are_valid_too(client):
    """Not greedy: temperature 1 with n=3 reaches tokens greedy never tries."""
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=1.0, seed=7, n=3,
                                       max_tokens=MAX_TOKENS, extra_body={"structured_outputs": {"regex": DATE_REGEX}})
    assert len(r.choices) == 3
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        check_fullmatch(choice.message.content, DATE_REGEX)
