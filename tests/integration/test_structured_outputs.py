"""Structured outputs on a real server (the demo model, the suite's shared -dp 2 server) through
real clients: the openai SDK (`response_format`, `.parse` with a pydantic model, vLLM's
`structured_outputs` and `guided_*` in `extra_body`) and httpx on SGLang's `/generate`.

Every output is checked against its constraint (a JSON schema validator, `re.fullmatch`, the list
of choices) and must end with "stop": the constraints are bounded, so a grammar that is obeyed
ends before `MAX_TOKENS`.
"""
from __future__ import annotations

import json

import httpx
import pytest

import structured_cases
from structured_cases import (CHOICES, DATE_REGEX, LARK_GRAMMAR, LARK_PATTERN, MAX_TOKENS, PERSON_SCHEMA,
                              SGLANG_CASES, VLLM_CASES, check_choice, check_fullmatch,
                              check_json_object, check_json_schema)

MODEL = "demo"
# JSON lines: the demo model (trained on Python's docs) closes a JSON object after these
PROMPT = '{"a": 1}\n{"b": 2}\n{"c": 3}\n'
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def server(shared_server):
    return shared_server


@pytest.fixture(scope="module")
def client(server):
    return structured_cases.openai_client(server)


def chat(client, stream: bool = False, **kwargs):
    return structured_cases.chat(client, MODEL, MESSAGES, stream, **kwargs)


def complete(client, stream: bool = False, **kwargs):
    return structured_cases.complete(client, MODEL, PROMPT, stream, **kwargs)


def test_parse_with_a_pydantic_model_returns_a_parsed_object(client):
    structured_cases.parsed_person(client, MODEL, MESSAGES)


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_response_format_json_schema_and_json_object(client, route):
    schema_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA,
                                                            "strict": True}}
    for response_format, check in ((schema_format, lambda t: check_json_schema(t, PERSON_SCHEMA)),
                                   ({"type": "json_object"}, check_json_object)):
        if route == "chat":
            text, reason = chat(client, response_format=response_format)
        else:  # vLLM's completions take it too; the SDK's signature does not
            text, reason = complete(client, extra_body={"response_format": response_format})
        assert reason == "stop", text
        check(text)


@pytest.mark.parametrize("case", sorted(VLLM_CASES))
@pytest.mark.parametrize("route", ["chat", "completions"])
def test_vllm_structured_outputs_match_streamed_or_not(client, route, case):
    body, check = VLLM_CASES[case]
    ask = chat if route == "chat" else complete
    text, reason = ask(client, extra_body={"structured_outputs": body})
    assert reason == "stop", text
    check(text)
    assert ask(client, stream=True, extra_body={"structured_outputs": body}) == (text, reason)


@pytest.mark.parametrize("field, value, check", [
    ("guided_json", PERSON_SCHEMA, lambda t: check_json_schema(t, PERSON_SCHEMA)),
    ("guided_regex", DATE_REGEX, lambda t: check_fullmatch(t, DATE_REGEX)),
    ("guided_choice", CHOICES, check_choice),
    ("guided_grammar", LARK_GRAMMAR, lambda t: check_fullmatch(t, LARK_PATTERN)),
], ids=["json", "regex", "choice", "grammar"])
def test_vllm_guided_fields(client, field, value, check):
    text, reason = complete(client, extra_body={field: value})
    assert reason == "stop", text
    check(text)


@pytest.mark.parametrize("case", sorted(SGLANG_CASES))
def test_sglang_generate_constraints_streamed_or_not(server, case):
    field, value, check = SGLANG_CASES[case]
    params = {"temperature": 0, "max_new_tokens": MAX_TOKENS, field: value}
    r = httpx.post(f"{server.url}/generate", json={"text": PROMPT, "sampling_params": params}, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["meta_info"]["finish_reason"]["type"] == "stop", out
    check(out["text"])
    last = None
    with httpx.stream("POST", f"{server.url}/generate", timeout=120,
                      json={"text": PROMPT, "sampling_params": params, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                last = json.loads(line[6:])  # SGLang streams the text so far
    assert last is not None and last["text"] == out["text"]

