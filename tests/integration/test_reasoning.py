"""Reasoning output on a real server, through the openai SDK: the demo model with a Qwen3-style
thinking template (think markers as tokens, tests/support/think_templates.py), no
--reasoning-parser (picked from the template). Its greedy answer is thinking, `</think>`, then
an answer: `reasoning_content` (and vLLM's `reasoning`) carries the thinking, `content` the
answer, streamed deltas join to the same; `chat_template_kwargs: {"enable_thinking": false}`
reaches the template (a longer prompt, no thinking); a JSON-schema answer after free thinking
validates, as does a forced tool call; bad template variables get a 400 naming them."""
from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from server_process import ServerProcess
from think_templates import thinking_model

MODEL = "demo"
ASK = [{"role": "user", "content": "How do lists work in Python?"}]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok"],
          "properties": {"ok": {"type": "boolean"}}}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
OFF = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, hf_reference):
    model_dir, _ = thinking_model(tmp_path_factory.mktemp("think") / "demo-think", ASK, hf_reference.greedy)
    return model_dir


@pytest.fixture(scope="module")
def server(model_dir):
    proc = ServerProcess("--model", str(model_dir), "--dtype", "float32", "--served-model-name", MODEL)
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def create(client, **fields):
    fields = {"messages": ASK, "temperature": 0, "max_tokens": 24, **fields}
    extra = {k: fields.pop(k) for k in ("chat_template_kwargs", "include_reasoning") if k in fields}
    return client.chat.completions.create(model=MODEL, extra_body=extra or None, **fields)


def streamed(client, **fields) -> tuple[str, str, str]:
    """The thinking, `reasoning` and content the deltas join to."""
    thinking, reasoning, content = "", "", ""
    for chunk in create(client, stream=True, **fields):
        for choice in chunk.choices:
            delta = choice.delta.model_dump()
            assert delta.get("reasoning_content") == delta.get("reasoning")
            thinking += delta.get("reasoning_content") or ""
            reasoning += delta.get("reasoning") or ""
            content += delta.get("content") or ""
    return thinking, reasoning, content


@pytest.fixture(scope="module")
def free(client):
    """The unconstrained greedy answer's message."""
    return create(client).choices[0].message


def test_the_thinking_comes_apart_from_the_answer_streamed_alike(client, free):
    extra = free.model_extra
    assert free.reasoning_content and free.content and "</think>" not in free.reasoning_content + free.content
    assert extra["reasoning"] == extra["reasoning_content"]
    assert streamed(client) == (free.reasoning_content, free.reasoning_content, free.content)
    whole = create(client, **OFF)  # thinking off: the same model's answer is all content
    assert whole.choices[0].message.model_extra["reasoning_content"] is None


def test_enable_thinking_false_reaches_the_template(client, server, free):
    on, off = create(client), create(client, **OFF)
    counts = [httpx.post(f"{server.url}/tokenize", json={"model": MODEL, "messages": ASK, **kwargs}).json()["count"]
              for kwargs in ({}, OFF)]
    assert [on.usage.prompt_tokens, off.usage.prompt_tokens] == counts
    assert off.usage.prompt_tokens > on.usage.prompt_tokens  # "\n</think>\n\n" closes the block
    message = off.choices[0].message
    assert message.model_extra["reasoning_content"] is None and message.content
    assert streamed(client, **OFF) == ("", "", message.content)


def test_include_reasoning_false_leaves_the_thinking_out(client, free):
    message = create(client, include_reasoning=False).choices[0].message
    assert message.content == free.content and "reasoning_content" not in message.model_extra
    assert streamed(client, include_reasoning=False) == ("", "", free.content)


def test_a_json_schema_answer_after_free_thinking_validates(client, free):
    answer = create(client, response_format=JSON_FORMAT, max_tokens=40)
    message = answer.choices[0].message
    assert message.reasoning_content == free.reasoning_content  # the grammar left the thinking be
    assert not message.reasoning_content.lstrip().startswith("{")
    jsonschema.validate(json.loads(message.content), SCHEMA)
    assert answer.choices[0].finish_reason == "stop"
    thinking, _, content = streamed(client, response_format=JSON_FORMAT, max_tokens=40)
    assert (thinking, content) == (message.reasoning_content, message.content)


def test_a_forced_tool_call_is_read_from_the_answer(client, free):
    tool = {"type": "function", "function": {"name": "check", "parameters": SCHEMA}}
    answer = create(client, tools=[tool], tool_choice={"type": "function", "function": {"name": "check"}},
                    max_tokens=40)
    message = answer.choices[0].message
    assert message.reasoning_content == free.reasoning_content
    [call] = message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), SCHEMA)
    assert answer.choices[0].finish_reason == "tool_calls" and message.content is None


def test_reasoning_effort_is_accepted(client, free):
    message = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=24,
                                             reasoning_effort="low").choices[0].message
    assert message.content == free.content  # this template does not read it


@pytest.mark.parametrize("fields, param", [
    ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs"),
    ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs.messages"),
    ({"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs.add_generation_prompt"),
    ({"chat_template_kwargs": {"bos_token": "x"}}, "chat_template_kwargs.bos_token"),
    ({"chat_template_kwargs": {"tokenize": False}}, "chat_template_kwargs.tokenize"),
    ({"chat_template_kwargs": {"not a name": 1}}, "chat_template_kwargs.not a name"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"include_reasoning": "yes"}, "include_reasoning"),
])
def test_bad_template_variables_get_a_400_naming_them(server, fields, param):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, **fields}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
