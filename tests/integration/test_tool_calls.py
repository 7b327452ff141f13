"""Tool calling on a real server (the demo model with a Hermes-style chat template that renders
tools, calls and results) through the openai SDK: named and required choices give valid calls,
streamed deltas reassemble to the non-streamed call, a full round trip (call, tool result,
answer) goes through the chat template, auto without a call is plain content, and bad tool
fields get a 400 naming the field."""
from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel, Field
from transformers import AutoTokenizer

from server_process import ServerProcess
from tool_templates import HERMES_STYLE_TEMPLATE, model_with_template

MODEL = "demo"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city for some days",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"type": "string", "maxLength": 12},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["zone"],
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}}}
TOOLS = [WEATHER, TIME]
TYPES = {"string": str, "integer": int}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return model_with_template(tmp_path_factory.mktemp("tools") / "demo-tools", HERMES_STYLE_TEMPLATE)


@pytest.fixture(scope="module")
def server(model_dir):
    proc = ServerProcess("--model", str(model_dir), "--dtype", "float32", "--served-model-name", MODEL)
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def create(client, **fields):
    fields = {"messages": ASK, "tools": TOOLS, "temperature": 0, "max_tokens": 200, **fields}
    return client.chat.completions.create(model=MODEL, **fields)


def check_call(call) -> None:
    """A call names one of the tools and its arguments parse and match that tool's schema."""
    tool = next(t["function"] for t in TOOLS if t["function"]["name"] == call.function.name)
    arguments = json.loads(call.function.arguments)
    schema = tool["parameters"]
    assert set(arguments) == set(schema["required"])
    for key, value in arguments.items():
        assert isinstance(value, TYPES[schema["properties"][key]["type"]]), (key, value)
    assert call.type == "function" and call.id.startswith("call_")


def streamed(client, **fields):
    """The calls a stream's deltas reassemble to, its content, its pieces and last finish reason."""
    calls, content, pieces, finish = {}, "", [], None
    for chunk in create(client, stream=True, **fields):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for piece in choice.delta.tool_calls or []:
            pieces.append(piece)
            if piece.index not in calls:
                assert piece.id and piece.type == "function" and piece.function.name
                calls[piece.index] = [piece.function.name, ""]
            else:
                assert piece.id is None and piece.function.name is None
            calls[piece.index][1] += piece.function.arguments or ""
        finish = choice.finish_reason or finish
    return [tuple(calls[i]) for i in sorted(calls)], content, pieces, finish


def test_a_named_function_gives_one_valid_call_streamed_alike(client):
    answer = create(client, tool_choice=NAMED)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    check_call(call)
    calls, content, pieces, finish = streamed(client, tool_choice=NAMED)
    assert calls == [("get_weather", call.function.arguments)] and content == "" and finish == "tool_calls"
    assert pieces[0].id and pieces[0].function.name == "get_weather"
    # NOTE: how many pieces arrive depends on timing (the API server merges deltas that queued
    # up while a chunk was being sent), so it is not asserted here; that the arguments stream
    # fragment by fragment is test_tool_parsers.py's test_named_call_streams_every_character_as_arguments.


def test_each_of_n_sequences_makes_its_own_call(client):
    fields = dict(tool_choice=NAMED, n=3, temperature=1.0, seed=7)
    answer = create(client, **fields)
    assert sorted(c.index for c in answer.choices) == [0, 1, 2]
    for choice in answer.choices:
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        check_call(call)
    arguments = {}
    for chunk in create(client, stream=True, **fields):
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                arguments[choice.index] = arguments.get(choice.index, "") + piece.function.arguments
    assert arguments == {c.index: c.message.tool_calls[0].function.arguments for c in answer.choices}


# NOTE: greedy, the demo model repeats one call until the length limit; penalties make it
# call both tools once and close the array.
PARALLEL = {"parallel_tool_calls": True, "presence_penalty": 1.0, "frequency_penalty": 0.5}


@pytest.mark.parametrize("fields", [{"parallel_tool_calls": False}, PARALLEL], ids=["one", "parallel"])
def test_required_gives_valid_calls_streamed_alike(client, fields):
    answer = create(client, tool_choice="required", **fields)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert len(calls) == 1 if not fields["parallel_tool_calls"] else len(calls) >= 2
    for call in calls:
        check_call(call)
    assert len({c.id for c in calls}) == len(calls)
    got, content, _, finish = streamed(client, tool_choice="required", **fields)
    assert got == [(c.function.name, c.function.arguments) for c in calls]
    assert content == "" and finish == "tool_calls"


class GetWeather(BaseModel):
    city: str = Field(max_length=12)
    days: int = Field(ge=1, le=7)


def test_the_sdk_parses_strict_pydantic_tools(client):
    """openai's own helpers: `parse` reads the arguments into the pydantic model, `stream`
    accumulates the deltas into the same call."""
    tool = openai.pydantic_function_tool(GetWeather)
    named = {"type": "function", "function": {"name": "GetWeather"}}
    fields = dict(model=MODEL, messages=ASK, tools=[tool], tool_choice=named, temperature=0, max_tokens=100)
    parsed = client.chat.completions.parse(**fields).choices[0].message.tool_calls[0]
    assert isinstance(parsed.function.parsed_arguments, GetWeather)
    assert parsed.function.parsed_arguments == GetWeather.model_validate_json(parsed.function.arguments)
    with client.chat.completions.stream(**fields) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("GetWeather", parsed.function.arguments)
    assert call.function.parsed_arguments == parsed.function.parsed_arguments


# NOTE: the demo model shown tools rambles to the length limit greedily; a frequency penalty
# lets it end its answer itself.
ENDS = {"frequency_penalty": 1.0}


def test_auto_without_a_call_is_plain_content(client):
    answer = create(client, **ENDS)
    choice = answer.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    assert choice.message.content and "<tool_call>" not in choice.message.content
    calls, content, _, finish = streamed(client, **ENDS)
    assert (calls, content, finish) == ([], choice.message.content, "stop")
    none = create(client, tool_choice="none", **ENDS)
    assert none.choices[0].message.content == choice.message.content  # the same prompt, no parsing


def test_a_round_trip_through_the_chat_template(server, client, model_dir):
    call = create(client, tool_choice=NAMED).choices[0].message.tool_calls[0]
    result = "Sunny and 21 degrees in Paris all week"
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": result}]
    answer = create(client, messages=messages, **ENDS)
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    # The prompt the server tokenized is what the template makes of these messages, arguments
    # as a dict (Transformers' own rendering, read independently of the server):
    reference = AutoTokenizer.from_pretrained(model_dir)
    as_template = [dict(m) for m in messages]
    as_template[1] = {**messages[1], "content": "", "tool_calls": [{
        "id": call.id, "type": "function",
        "function": {"name": call.function.name, "arguments": json.loads(call.function.arguments)}}]}
    ids = reference.apply_chat_template(as_template, tools=TOOLS, add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    assert answer.usage.prompt_tokens == len(ids)
    tokenized = httpx.post(f"{server.url}/tokenize", json={"model": MODEL, "messages": messages,
                                                           "tools": TOOLS}, timeout=30).json()
    assert tokenized["tokens"] == list(ids)
    text = reference.decode(ids)
    assert f"<tool_response>\n{result}\n</tool_response>" in text
    assert json.dumps(json.loads(call.function.arguments)) in text and "get_time" in text


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "tools.0.function.parameters"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages.1.tool_calls.0.function.arguments"),
])
def test_bad_tool_fields_are_400s_naming_the_field(server, client, fields, param):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, **fields}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert create(client, max_tokens=2).choices[0].finish_reason == "length"  # still serving


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice, param", [(NAMED, "tools.1.function.parameters"), ("required", "tools")])
def test_a_forced_call_whose_schema_does_not_compile_is_a_400(server, client, choice, param, stream):
    bad = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "frob"}}}
    body = {"model": MODEL, "messages": ASK, "max_tokens": 20, "tools": [TIME, bad], "tool_choice": choice,
            "stream": stream}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "frob" in error["message"] and error["param"] == param
    assert error["code"] == "invalid_structured_output"
    assert create(client, max_tokens=2).choices[0].finish_reason == "length"  # still serving


def test_a_forced_call_and_response_format_are_a_400(server):
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required",
            "response_format": {"type": "json_object"}}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
