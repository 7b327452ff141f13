"""JSON-schema constraints generate no properties the schema does not name (xgrammar's default,
vLLM's and SGLang's), unless the server follows the JSON Schema letter
(`--no-structured-output-strict-properties`). Two demo-model servers, one each way.

NOTE: `x` is one digit here (`minimum` 0, `maximum` 9). With an unbounded integer the demo model
writes digits until `max_tokens` under either reading (it prefers digits to "}"), which says
nothing about properties; on the real SmolLM2 checkpoint the unbounded schema closes
(`test_structured_strict_real_checkpoint.py`). After one digit the strict grammar allows only
"}"; the letter's allows "," too (another property), and the demo model takes it.

The letter's behaviour is also shown without relying on what the model prefers: a `logit_bias`
of +100 on "," makes the model take a comma wherever the grammar allows one."""
from __future__ import annotations

import json
import re

import httpx
import jsonschema
import pytest
import structured_cases
from server_process import ServerProcess

from bastion.model.demo import DEMO_MODEL_DIR
from bastion.model.tokenizer import load_tokenizer

MODEL = "demo"
X_SCHEMA = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["x"]}
MAX_TOKENS = 64
CLOSED = re.compile(r'\{"x":[0-9]\}')
ONE_MORE = re.compile(r'\{"x":[0-9],"')  # the letter's: a property the schema does not name


@pytest.fixture(scope="module")
def strict():
    proc = ServerProcess("--served-model-name", MODEL, "--dtype", "float32")
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def letter():
    proc = ServerProcess("--served-model-name", MODEL, "--dtype", "float32",
                         "--no-structured-output-strict-properties")
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def comma_bias() -> dict[str, float]:
    (comma,) = load_tokenizer(str(DEMO_MODEL_DIR)).encode(",", add_special_tokens=False)
    return {str(comma): 100.0}


def generate(server, **sampling) -> dict:
    r = httpx.post(f"{server.url}/generate", timeout=120, json={
        "text": "The value:", "sampling_params": {"temperature": 0, "max_new_tokens": MAX_TOKENS,
                                                  "json_schema": json.dumps(X_SCHEMA), **sampling}})
    assert r.status_code == 200, r.text
    return r.json()


def test_sglang_generate_closes_within_64_tokens_and_validates(strict):
    out = generate(strict)
    assert out["meta_info"]["finish_reason"]["type"] == "stop", out
    jsonschema.validate(json.loads(out["text"]), {**X_SCHEMA, "additionalProperties": False})


def test_response_format_chat_closes_within_64_tokens_and_validates(strict):
    client = structured_cases.openai_client(strict)
    text, reason = structured_cases.chat(client, MODEL, [{"role": "user", "content": "x?"}], max_tokens=MAX_TOKENS,
                                         response_format={"type": "json_schema",
                                                          "json_schema": {"name": "x", "schema": X_SCHEMA}})
    assert reason == "stop", text
    jsonschema.validate(json.loads(text), {**X_SCHEMA, "additionalProperties": False})


def complete(server, bias: dict, structured: dict) -> tuple[str, str]:
    r = httpx.post(f"{server.url}/v1/completions", timeout=120, json={
        "model": MODEL, "prompt": "The value:", "max_tokens": 16, "temperature": 0, "logit_bias": bias,
        "structured_outputs": structured})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return choice["text"], choice["finish_reason"]


def test_a_model_pushed_to_add_a_property_cannot_under_the_strict_reading(strict, comma_bias):
    text, reason = complete(strict, comma_bias, {"json": X_SCHEMA})
    assert CLOSED.fullmatch(text) and reason == "stop", text


def test_the_letter_lets_it_add_one(letter, comma_bias):
    text, _ = complete(letter, comma_bias, {"json": X_SCHEMA})
    assert ONE_MORE.match(text), text


def test_a_request_may_ask_for_the_strict_reading_on_a_letter_server(letter, comma_bias):
    """vLLM's `structured_outputs.disable_additional_properties`."""
    text, reason = complete(letter, comma_bias, {"json": X_SCHEMA, "disable_additional_properties": True})
    assert CLOSED.fullmatch(text) and reason == "stop", text
