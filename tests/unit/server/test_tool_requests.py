"""Tool fields: their plan and 400s, the constraint of named and required calls (checked with
llguidance on the demo tokenizer), tool messages through a chat template, the parser a
template calls for, and the shapes of answers and stream deltas."""
from __future__ import annotations

import json

import pytest
from llguidance import LLMatcher
from pydantic import ValidationError

from bastion.cli import build_parser
from bastion.args.serve import serve_config
from bastion.config.server import TOOL_CALL_PARSERS, ServerConfig
from bastion.model.demo import default_model_path
from bastion.model.tokenizer import load_tokenizer
from bastion.server.frontend import Frontend
from bastion.server.http.errors import APIError
from bastion.server.routes.protocol import ChatCompletionRequest, TokenizeRequest
from bastion.server.tools.choose import PARSERS, AutoParsing, parser_for_template
from bastion.server.tools.constraint import tool_constraint
from bastion.server.tools.shaping import ToolAnswer
from bastion.structured.spec import StructuredOutputs
from bastion.structured.tokenizer import grammar_tokenizer
from tool_templates import HERMES_STYLE_TEMPLATE

WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "time"}}
MSG = [{"role": "user", "content": "hi"}]
HERMES = AutoParsing("hermes")


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=fields.pop("messages", MSG), **fields)


def test_plans():
    assert chat().tool_plan() is None and chat(tool_choice="none", tools=[]).tool_plan() is None
    assert chat(tools=[WEATHER]).tool_plan().mode == "auto"
    assert chat(tools=[WEATHER], tool_choice="none").tool_plan().mode == "none"
    plan = chat(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "time"}},
                parallel_tool_calls=False).tool_plan()
    assert (plan.mode, plan.name, plan.parallel) == ("named", "time", False)
    assert chat(tools=[WEATHER], tool_choice="required").tool_plan().parallel


@pytest.mark.parametrize("fields, param, message", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name", "'nope', which is not in 'tools' (weather)"),
    ({"tool_choice": "required"}, "tool_choice", "'tools' gives none"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "two tools are named 'weather'"),
])
def test_contradictions_are_400s_naming_the_field(fields, param, message):
    with pytest.raises(APIError) as caught:
        chat(**fields).tool_plan()
    assert caught.value.status == 400 and caught.value.param == param and message in caught.value.message


@pytest.mark.parametrize("fields, loc", [
    ({"tools": [{"type": "retrieval", "function": WEATHER["function"]}]}, ("tools", 0, "type")),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, ("tools", 0, "function", "name")),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, ("tools", 0, "function", "name")),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     ("tools", 0, "function", "parameters")),
    ({"tools": [{"type": "function", "function": {"name": "f", "bogus": 1}}]}, ("tools", 0, "function", "bogus")),
    ({"tools": [WEATHER] * 129}, ("tools",)),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, ("tool_choice",)),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, ("parallel_tool_calls",)),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                          "function": {"name": "f", "arguments": {}}}]}]},
     ("messages", 0, "tool_calls", 0, "function", "arguments")),
])
def test_bad_shapes_name_the_field(fields, loc):
    with pytest.raises(ValidationError) as caught:
        chat(**fields)
    assert any(tuple(e["loc"][:len(loc)]) == loc for e in caught.value.errors())


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_model_path())


_LL = {}


def _accepts(tokenizer, spec, text: str) -> bool:
    if "tok" not in _LL:
        _LL["tok"] = grammar_tokenizer(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    matcher = LLMatcher(_LL["tok"], spec.grammar_text())
    assert not matcher.is_error(), matcher.get_error()
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return matcher.consume_tokens(ids) and matcher.is_accepting()


def test_named_call_is_constrained_to_its_parameters(tokenizer):
    field, kwargs = tool_constraint(chat(tools=[TIME, WEATHER], tool_choice={
        "type": "function", "function": {"name": "weather"}}).tool_plan())
    spec = StructuredOutputs(**kwargs)
    assert json.loads(spec.json) == WEATHER["function"]["parameters"]
    assert field == "tools.1.function.parameters"
    assert _accepts(tokenizer, spec, '{"city":"Paris","days":3}')
    assert not _accepts(tokenizer, spec, '{"city":"Paris"}')
    no_params = chat(tools=[TIME], tool_choice={"type": "function", "function": {"name": "time"}}).sampling(5) \
        .structured_outputs
    assert _accepts(tokenizer, no_params, "{}") and not _accepts(tokenizer, no_params, '{"a":1}')
    assert tool_constraint(chat(tools=[WEATHER]).tool_plan()) is None
    assert tool_constraint(chat(tools=[WEATHER], tool_choice="none").tool_plan()) is None


def test_required_is_an_array_of_calls_to_known_tools(tokenizer):
    body = chat(tools=[WEATHER, TIME], tool_choice="required", max_tokens=5)
    spec = body.sampling(5).structured_outputs
    assert body.constraint == (spec, "tools")
    one, two = '{"name":"weather","parameters":{"city":"Oslo","days":1}}', '{"name":"time","parameters":{}}'
    assert _accepts(tokenizer, spec, f"[{one}]") and _accepts(tokenizer, spec, f"[{one},{two}]")
    assert not _accepts(tokenizer, spec, "[]")
    assert not _accepts(tokenizer, spec, '[{"name":"nope","parameters":{}}]')
    assert not _accepts(tokenizer, spec, '[{"name":"time","parameters":{"x":1}}]')
    single = chat(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False).sampling(5)
    assert _accepts(tokenizer, single.structured_outputs, f"[{two}]")
    assert not _accepts(tokenizer, single.structured_outputs, f"[{one},{two}]")


ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]


def test_tool_messages_and_tools_pass_through_the_chat_template():
    tokenizer = load_tokenizer(default_model_path())
    tokenizer.chat_template = HERMES_STYLE_TEMPLATE
    frontend = Frontend(ServerConfig(served_model_names=("m",)), None, tokenizer, 2048, len(tokenizer))
    body = chat(messages=ROUND_TRIP, tools=[WEATHER])
    text = tokenizer.decode(frontend.prompt_ids(body.to_prompt()))
    assert '"arguments": {"city": "Paris", "days": 1}' in text  # a dict for the template, not a string
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in text
    assert '"name": "weather"' in text and "the weather in a city" in text  # the tools section
    tokenized = TokenizeRequest(messages=ROUND_TRIP, tools=[WEATHER])
    assert frontend.prompt_ids(tokenized.to_prompt()) == frontend.prompt_ids(body.to_prompt())


@pytest.mark.parametrize("messages, param", [
    ([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                            "function": {"name": "f", "arguments": "{not json"}}]}],
     "messages.0.tool_calls.0.function.arguments"),
    ([MSG[0], {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}],
     "messages.1.tool_calls.0.function.arguments"),
    ([{"role": "user", "content": "x", "tool_calls": []}], "messages.0.tool_calls"),
])
def test_bad_tool_messages_name_the_field(messages, param):
    with pytest.raises(APIError) as caught:
        chat(messages=messages).to_prompt()
    assert caught.value.param == param


@pytest.mark.parametrize("template, parser", [
    (HERMES_STYLE_TEMPLATE, "hermes"),
    ("{{ '[AVAILABLE_TOOLS]' }}{% if m %}[TOOL_CALLS]{% endif %}", "mistral"),
    ("{{ '<|python_tag|>' }}", "llama3_json"),
    ("<|start_header_id|>ipython<|end_header_id|>", "llama3_json"),
    ({"default": "plain", "tool_use": "{{ '<tool_call>' }}"}, "hermes"),
    ({"default": "plain", "tool_use": "[TOOL_CALLS]"}, "mistral"),
    (None, "hermes"),
])
def test_the_template_picks_the_parser(template, parser):
    assert parser_for_template(template) == parser


def test_the_demo_template_falls_back_to_hermes_and_the_flag_wins(tokenizer):
    assert parser_for_template(tokenizer.chat_template) == "hermes"
    assert set(PARSERS) == set(TOOL_CALL_PARSERS)
    config = serve_config(build_parser().parse_args(["serve", "--tool-call-parser", "mistral",
                                                     "--enable-auto-tool-choice"]))
    assert config.server.tool_call_parser == "mistral"
    assert Frontend(config.server, None, tokenizer, 64, len(tokenizer)).tool_parsing == AutoParsing("mistral")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--tool-call-parser", "pythonic"])


def test_answers_with_calls_are_shaped_as_openai():
    named = ToolAnswer(chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "weather"}})
                       .tool_plan(), HERMES)
    message, finish = named.message('{"city":"Oslo","days":2}', "stop")
    assert finish == "tool_calls" and message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "weather", "arguments": '{"city":"Oslo","days":2}'}
    assert named.message('{"city":"Os', "length")[1] == "length"  # cut short: not a finished call
    auto = ToolAnswer(chat(tools=[WEATHER]).tool_plan(), HERMES)
    assert auto.message("No call here.", "stop") == ({"role": "assistant", "content": "No call here."}, "stop")
    none = ToolAnswer(chat(tools=[WEATHER], tool_choice="none").tool_plan(), HERMES)
    text = '<tool_call>{"name": "weather", "arguments": {}}</tool_call>'
    assert none.message(text, "stop") == ({"role": "assistant", "content": text}, "stop")


def test_auto_keeps_the_first_call_only_without_parallel_tool_calls():
    text = '<tool_call>{"name": "weather", "arguments": {}}</tool_call><tool_call>{"name": "time", "arguments": {}}</tool_call>'
    for parallel, names in ((True, ["weather", "time"]), (False, ["weather"])):
        answer = ToolAnswer(chat(tools=[WEATHER, TIME], parallel_tool_calls=parallel).tool_plan(), HERMES)
        message, finish = answer.message(text, "stop")
        assert [c["function"]["name"] for c in message["tool_calls"]] == names and finish == "tool_calls"
        delta, _ = ToolAnswer(answer.plan, HERMES).delta(0, text, "stop")
        assert [c["function"]["name"] for c in delta["tool_calls"]] == names


def test_stream_deltas_carry_content_then_call_pieces():
    auto = ToolAnswer(chat(tools=[WEATHER]).tool_plan(), HERMES)
    chunks = ["Checking.", " <tool_", 'call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>', ""]
    deltas = [auto.delta(0, c, "stop" if i == len(chunks) - 1 else None) for i, c in enumerate(chunks)]
    assert deltas[0] == ({"content": "Checking."}, None)
    assert deltas[1] == ({}, None)
    [piece] = deltas[2][0]["tool_calls"]
    assert piece["index"] == 0 and piece["type"] == "function" and piece["id"].startswith("call_")
    assert piece["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    assert deltas[3] == ({}, "tool_calls")


def test_hermes_reads_bare_calls_when_its_markers_are_special_tokens():
    tokenizer = load_tokenizer(default_model_path())
    assert AutoParsing.of(None, tokenizer) == HERMES
    tokenizer.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]})
    parsing = AutoParsing.of(None, tokenizer)
    assert parsing == AutoParsing("hermes", marker_special=True)
    ids = tokenizer('<tool_call>{"name": "time", "arguments": {}}</tool_call>', add_special_tokens=False).input_ids
    text = tokenizer.decode(ids, skip_special_tokens=True)  # what the answer's text holds
    assert text == '{"name": "time", "arguments": {}}'
    plan = chat(tools=[WEATHER, TIME]).tool_plan()
    message, finish = ToolAnswer(plan, parsing).message(text, "stop")
    assert message["tool_calls"][0]["function"]["name"] == "time" and finish == "tool_calls"
    assert ToolAnswer(plan, HERMES).message(text, "stop")[0] == {"role": "assistant", "content": text}
    kept = tokenizer.decode(ids, skip_special_tokens=False)  # the client kept them: tags are read
    assert ToolAnswer(plan, parsing, skip_special_tokens=False).message(kept, "stop")[1] == "tool_calls"


def test_a_forced_call_and_another_constraint_are_a_400_naming_tool_choice():
    for choice in ("required", {"type": "function", "function": {"name": "time"}}):
        body = chat(tools=[TIME], tool_choice=choice, response_format={"type": "json_object"})
        with pytest.raises(APIError) as caught:
            body.sampling(5)
        assert caught.value.param == "tool_choice" and "'response_format' constrains" in caught.value.message
    auto = chat(tools=[TIME], response_format={"type": "json_object"}).sampling(5)  # auto forces nothing
    assert auto.structured_outputs.json_object


# What the openai SDK's pydantic_function_tool writes for nested models: $defs at the parameters'
# root; and a recursive tool whose parameters refer to their own root.
ORDER = {"type": "function", "function": {"name": "order", "parameters": {
    "$defs": {"Item": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                       "required": ["sku", "qty"], "additionalProperties": False}},
    "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
    "required": ["items"], "additionalProperties": False}}}
TREE = {"type": "function", "function": {"name": "tree", "parameters": {
    "type": "object", "properties": {"name": {"type": "string"},
                                     "children": {"type": "array", "items": {"$ref": "#"}}},
    "required": ["name", "children"], "additionalProperties": False}}}


def test_required_keeps_each_tools_own_defs_and_root_references(tokenizer):
    """Inside the array of calls, a tool's `#/$defs/X` and `#` still mean its own definitions and
    root (llguidance would otherwise say the pointer does not exist, and the request a 400)."""
    spec = chat(tools=[ORDER, TREE, WEATHER], tool_choice="required").sampling(5).structured_outputs
    order = '{"name":"order","parameters":{"items":[{"sku":"a1","qty":2}]}}'
    tree = '{"name":"tree","parameters":{"name":"r","children":[{"name":"c","children":[]}]}}'
    assert _accepts(tokenizer, spec, f"[{order},{tree}]")
    assert not _accepts(tokenizer, spec, '[{"name":"order","parameters":{"items":[{"sku":"a1"}]}}]')
    assert not _accepts(tokenizer, spec, '[{"name":"tree","parameters":{"name":"r","children":[{"name":"c"}]}}]')
    named = chat(tools=[ORDER], tool_choice={"type": "function", "function": {"name": "order"}}).sampling(5)
    assert _accepts(tokenizer, named.structured_outputs, '{"items":[{"sku":"b","qty":1}]}')
