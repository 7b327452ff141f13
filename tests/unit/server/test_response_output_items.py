"""Output items from a sequence's text: a message, function calls (forced, as the tool
machinery reads them), statuses, and the same items whether the text comes whole or in pieces."""
from __future__ import annotations

import random

from bastion.server.reasoning.formats import FORMATS, Phase
from bastion.server.reasoning.splitter import ReasoningSplitter
from bastion.server.responses.events import EventWriter
from bastion.server.responses.output import OutputItems
from bastion.server.tools.choose import AutoParsing
from bastion.server.tools.request import FunctionDefinition, ToolDefinition, ToolPlan
from bastion.server.tools.shaping import ToolAnswer

TOOLS = (ToolDefinition(type="function", function=FunctionDefinition(name="f")),
         ToolDefinition(type="function", function=FunctionDefinition(name="g")))


def fed(text: str, finish: str, pieces: int, plan: ToolPlan | None = None, seed: int = 0,
        thinking: bool = False) -> OutputItems:
    splitter = ReasoningSplitter(FORMATS["qwen3"], Phase.OPENING) if thinking else None
    output = OutputItems(plan and ToolAnswer(plan, AutoParsing("hermes")), splitter)
    cuts = sorted(random.Random(seed).sample(range(1, len(text)), pieces - 1)) if pieces > 1 else []
    parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    for i, part in enumerate(parts):
        output.feed(part, finish if i == len(parts) - 1 else None)
    return output


def without_ids(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in items]


def test_text_is_one_message_completed_or_incomplete():
    [message] = fed("Hello there", "stop", 1).items
    assert message["type"] == "message" and message["status"] == "completed"
    assert message["content"] == [{"type": "output_text", "text": "Hello there", "annotations": []}]
    assert fed("Hello", "length", 1).items[0]["status"] == "incomplete"
    assert fed("", "stop", 1).items == []


def test_required_calls_are_function_call_items_the_same_whole_or_streamed():
    text = '[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {}}]'
    plan = ToolPlan("required", TOOLS)
    whole = fed(text, "stop", 1, plan).items
    assert [(i["type"], i["name"], i["arguments"], i["status"]) for i in whole] == [
        ("function_call", "f", '{"a": 1}', "completed"), ("function_call", "g", "{}", "completed")]
    assert all(i["call_id"].startswith("call_") and i["id"].startswith("fc_") for i in whole)
    for seed in range(5):
        assert without_ids(fed(text, "stop", 7, plan, seed).items) == without_ids(whole)


def test_auto_text_then_a_call_closes_the_message_first():
    text = 'Let me look.<tool_call>\n{"name": "f", "arguments": {"x": "y"}}\n</tool_call>'
    output = OutputItems(ToolAnswer(ToolPlan("auto", TOOLS), AutoParsing("hermes")))
    kinds = []
    for part, finish in ((text[:20], None), (text[20:], "stop")):
        kinds += [(e.kind, e.index) for e in output.feed(part, finish)]
    message, call = output.items
    assert message["content"][0]["text"] == "Let me look." and call["name"] == "f"
    assert kinds.index(("done", 0)) < kinds.index(("added", 1)) and kinds[-1] == ("done", 1)


def test_thinking_is_a_reasoning_item_ahead_of_the_answer_the_same_whole_or_streamed():
    call = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    text = "<think>Maybe " + call + " first.</think>Sure." + call
    plan = ToolPlan("auto", TOOLS)
    whole = fed(text, "stop", 1, plan, thinking=True).items
    reasoning, message, function = whole
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_") and reasoning["summary"] == []
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Maybe " + call + " first."}]
    assert message["content"][0]["text"] == "Sure." and function["name"] == "f"  # a call in the thinking is thinking
    for seed in range(6):
        assert without_ids(fed(text, "stop", 9, plan, seed, thinking=True).items) == without_ids(whole)
    cut = fed("<think>out of tok", "length", 3, thinking=True).items
    assert [(i["type"], i["status"]) for i in cut] == [("reasoning", "incomplete")]


def test_a_reasoning_item_streams_as_reasoning_text_events():
    output = OutputItems(None, ReasoningSplitter(FORMATS["qwen3"], Phase.OPENING))
    writer, names = EventWriter(), []
    for part, finish in (("<think>ab", None), ("c</think>Hi", None), ("!", "stop")):
        names += [e.split("\n")[0].removeprefix("event: ") for e in writer.items(output, output.feed(part, finish))]
    assert names == ["response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
                     "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
                     "response.output_item.done", "response.output_item.added", "response.content_part.added",
                     "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done"]
