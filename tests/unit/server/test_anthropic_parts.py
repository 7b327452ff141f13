"""The Messages API's pure parts: a body as a chat request (`to_chat`), refusals renamed to the
body's fields, content blocks streamed in any chunking equal to the whole answer's, and the
error shapes of each route family."""
from __future__ import annotations

import json
import random

import pytest

from bastion.server.anthropic.answer import error_event
from bastion.server.anthropic.blocks import ContentBlocks
from bastion.server.anthropic.request import CountTokensRequest, MessagesRequest
from bastion.server.anthropic.to_chat import anthropic_error, to_chat
from bastion.server.http.errors import APIError, error_body_for
from bastion.server.tools.choose import AutoParsing
from bastion.server.tools.request import NamedToolChoice, ToolDefinition, plan_tools
from bastion.server.tools.shaping import ToolAnswer

TOOL = {"name": "get_weather", "description": "weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def body(**fields) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 5,
                                           "messages": [{"role": "user", "content": "hi"}], **fields})


def test_a_conversation_becomes_chat_messages_in_order():
    chat = to_chat(body(
        system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=abc;"},
                {"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sun"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "rain", "is_error": True},
                {"type": "text", "text": "and?"}]}],
        stop_sequences=["END"], temperature=0.5, top_k=3, stream=True))
    prompt = chat.to_prompt()
    assert prompt.conversation == [
        {"role": "system", "content": "Be brief.\n\nBe kind."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sun", "tool_call_id": "toolu_1"},
        {"role": "tool", "content": "rain", "tool_call_id": "toolu_2"},
        {"role": "user", "content": "and?"}]
    assert prompt.add_generation_prompt and not prompt.continue_final_message
    assert (chat.stop_strings, chat.temperature, chat.top_k, chat.stream) == (["END"], 0.5, 3, True)


def test_budget_is_fitted_to_the_context_and_a_last_assistant_message_is_a_prefill():
    chat = to_chat(body(max_tokens=100_000, messages=[{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": "The answer is"}]))
    budget = chat.budget()
    assert (budget.requested, budget.default, budget.field) == (None, 100_000, "max_tokens")
    prompt = chat.to_prompt()
    assert prompt.continue_final_message and not prompt.add_generation_prompt


@pytest.mark.parametrize("choice, mode, name, parallel", [
    (None, "auto", None, True), ({"type": "auto"}, "auto", None, True),
    ({"type": "any"}, "required", None, True), ({"type": "any", "disable_parallel_tool_use": True}, "required", None, False),
    ({"type": "tool", "name": "get_weather"}, "named", "get_weather", True), ({"type": "none"}, "none", None, True)])
def test_tool_choice_maps_to_the_chat_plan(choice, mode, name, parallel):
    plan = to_chat(body(tools=[TOOL], **({"tool_choice": choice} if choice else {}))).tool_plan()
    assert (plan.mode, plan.name, plan.parallel) == (mode, name, parallel)
    assert plan.tools[0].function.parameters == TOOL["input_schema"]


def test_count_tokens_bodies_and_refused_fields():
    chat = to_chat(CountTokensRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                      "thinking": {"type": "enabled", "budget_tokens": 2048}}))
    assert chat.to_prompt().conversation == [{"role": "user", "content": "hi"}]
    with pytest.raises(APIError) as err:
        to_chat(body(mcp_servers=[{"url": "u"}]))
    assert err.value.param == "mcp_servers"
    to_chat(body(mcp_servers=[]))  # the harmless value


def test_refusals_are_renamed_to_the_bodys_fields():
    renamed = anthropic_error(APIError(400, "invalid 'tools.1.function.parameters': bad", "tools.1.function.parameters",
                                       "invalid_structured_output"))
    assert (renamed.param, renamed.message) == ("tools.1.input_schema", "invalid 'tools.1.input_schema': bad")
    renamed = anthropic_error(APIError(400, "'tool_choice' forces a tool call and 'response_format.json_schema.schema' "
                                            "constrains the output: give only one", "tool_choice"))
    assert "'output_config.format.schema'" in renamed.message and renamed.param == "tool_choice"
    assert anthropic_error(APIError(400, "x", "tool_choice.function.name")).param == "tool_choice.name"


def answer_plan(mode: str):
    tools = [ToolDefinition.model_validate({"type": "function", "function": {
        "name": TOOL["name"], "parameters": TOOL["input_schema"]}})]
    choice = NamedToolChoice.model_validate({"type": "function", "function": {"name": TOOL["name"]}}) \
        if mode == "named" else mode
    return plan_tools(tools, choice, None)


def streamed(tools_factory, text: str, finish: str, seed: int,
             thinking=lambda: None) -> tuple[list[dict], list[dict], str]:
    """The events of `text` fed in random chunks, the blocks they build, the finish reason."""
    rng, blocks, events, pos = random.Random(seed), ContentBlocks(tools_factory(), thinking()), [], 0
    while pos < len(text):
        step = rng.randint(1, 6)
        events += blocks.feed(text[pos:pos + step])
        pos += step
    events += blocks.feed("", finish)
    return events, rebuild(events), blocks.finish_reason


def rebuild(events: list[dict]) -> list[dict]:
    """What a client makes of the events (as the anthropic SDK accumulates them)."""
    built: list[dict] = []
    open_blocks: set[int] = set()
    for e in events:
        if e["type"] == "content_block_start":
            assert e["index"] == len(built) and not open_blocks
            built.append(dict(e["content_block"], _json=""))
            open_blocks.add(e["index"])
        elif e["type"] == "content_block_delta":
            assert e["index"] in open_blocks
            delta, block = e["delta"], built[e["index"]]
            if delta["type"] in ("text_delta", "thinking_delta"):
                kind = delta["type"].removesuffix("_delta")
                block[kind] += delta[kind]
            else:
                assert delta["type"] == "input_json_delta"
                block["_json"] += delta["partial_json"]
        else:
            assert e["type"] == "content_block_stop" and e["index"] in open_blocks
            open_blocks.remove(e["index"])
    assert not open_blocks
    for block in built:
        raw = block.pop("_json")
        if block["type"] == "tool_use":
            block["input"] = json.loads(raw) if raw else {}
    return built


HERMES = AutoParsing("hermes")
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("mode, text, finish, content, reason", [
    (None, "Hello there, friend.", "stop", [{"type": "text", "text": "Hello there, friend."}], "stop"),
    (None, "", "stop", [], "stop"),
    ("auto", "Let me check. " + CALL, "stop", [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "name": "get_weather", "input": {"city": "Paris"}}], "tool_calls"),
    ("auto", "No tools needed.", "length", [{"type": "text", "text": "No tools needed."}], "length"),
    ("named", '{"city": "Lyon"}', "stop", [{"type": "tool_use", "name": "get_weather", "input": {"city": "Lyon"}}],
     "tool_calls"),
])
def test_streamed_blocks_in_any_chunking_equal_the_whole_answer(mode, text, finish, content, reason):
    plan = answer_plan(mode) if mode else None

    def tools():
        return plan and ToolAnswer(plan, HERMES)
    whole = ContentBlocks(tools())
    whole.feed(text, finish)
    got = whole.content()
    assert [{k: v for k, v in b.items() if k != "id"} for b in got] == content
    assert whole.finish_reason == reason
    assert all(b["id"].startswith("toolu_") for b in got if b["type"] == "tool_use")
    for seed in range(8):
        events, built, finish_reason = streamed(tools, text, finish, seed)
        assert [{k: v for k, v in b.items() if k != "id"} for b in built] == content, (seed, events)
        assert finish_reason == reason


@pytest.mark.parametrize("text, finish, content, reason", [
    ("<think>\nWeather first.\n</think>\n\nIt is sunny.", "stop",
     [{"type": "thinking", "thinking": "\nWeather first.\n", "signature": ""},
      {"type": "text", "text": "\n\nIt is sunny."}], "stop"),
    ("<think>I will call it. " + CALL + "</think>" + CALL, "stop",  # a call inside the thinking is thinking
     [{"type": "thinking", "thinking": "I will call it. " + CALL, "signature": ""},
      {"type": "tool_use", "name": "get_weather", "input": {"city": "Paris"}}], "tool_calls"),
    ("<think>cut off by the len", "length", [{"type": "thinking", "thinking": "cut off by the len", "signature": ""}],
     "length"),
    ("No thinking at all.", "stop", [{"type": "text", "text": "No thinking at all."}], "stop"),
])
def test_thinking_becomes_thinking_blocks_and_only_the_answer_is_read_for_tools(text, finish, content, reason):
    from bastion.server.reasoning.formats import FORMATS, Phase
    from bastion.server.reasoning.splitter import ReasoningSplitter

    plan = answer_plan("auto")

    def thinking():
        return ReasoningSplitter(FORMATS["qwen3"], Phase.OPENING)
    whole = ContentBlocks(ToolAnswer(plan, HERMES), thinking())
    whole.feed(text, finish)
    got = [{k: v for k, v in b.items() if k != "id"} for b in whole.content()]
    assert got == content and whole.finish_reason == reason
    for seed in range(8):
        events, built, finish_reason = streamed(lambda: ToolAnswer(plan, HERMES), text, finish, seed, thinking)
        assert [{k: v for k, v in b.items() if k != "id"} for b in built] == content, (seed, events)
        assert finish_reason == reason


@pytest.mark.parametrize("messages, words", [
    ([{"role": "user", "content": [{"type": "image", "source": {}}]}],
     "invalid value for 'messages.0.content.0.type': Input should be 'text' or 'tool_result'"),
    ([{"role": "assistant", "content": [{"type": "text"}]}], "missing required field 'messages.0.content.0.text'"),
    ([{"role": "system", "content": "x"}], "invalid value for 'messages.0.role': Input should be 'user' or 'assistant'"),
])
def test_a_bad_block_is_named_by_the_member_its_type_or_role_means(messages, words):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from bastion.server.http.errors import install_error_handlers
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/messages")
    async def route(body: MessagesRequest) -> dict:
        return {}
    reply = TestClient(app).post("/v1/messages", json={"model": "m", "max_tokens": 3, "messages": messages})
    assert reply.status_code == 400 and reply.json()["error"]["message"] == words


def test_each_family_has_its_error_shape():
    assert error_body_for("/v1/messages", 401, "invalid credentials") == {
        "type": "error", "error": {"type": "authentication_error", "message": "invalid credentials"}}
    assert error_body_for("/v1/messages/count_tokens", 400, "bad", "max_tokens")["error"]["message"] == "max_tokens: bad"
    assert error_body_for("/v1/messages/x", 503, "busy")["error"]["type"] == "overloaded_error"
    assert error_body_for("/v1/messagesx", 404, "no")["error"]["code"] == 404  # not the family: OpenAI's
    assert error_body_for("/v1/chat/completions", 429, "slow")["error"]["type"] == "rate_limit_error"
    assert error_event(APIError(500, "internal server error")) == (
        'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"internal server error"}}\n\n')
