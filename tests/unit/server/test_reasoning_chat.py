"""The thinking in chat completions' shape, on canned outputs: tool calls are read from the
answer only (a call written inside the thinking is thinking), streamed deltas in random chunk
splits join to the whole message, empty answers after thinking are null; the server's reasoning
setup from --reasoning-parser and the template; chat_template_kwargs' refusals."""
from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from bastion.model.demo import DEMO_MODEL_DIR
from bastion.server.generation import SequenceDelta
from bastion.server.http.errors import APIError
from bastion.server.reasoning.choose import Reasoning
from bastion.server.reasoning.formats import FORMATS
from bastion.server.reasoning.chat import ChatReasoning
from bastion.server.routes.openai_answers import ResponseBuilder
from bastion.server.routes.fields.template_kwargs import template_kwargs
from bastion.server.tools.choose import AutoParsing
from bastion.server.tools.request import FunctionDefinition, ToolDefinition, ToolPlan
from bastion.server.tools.shaping import ToolAnswer

CALL = '<tool_call>{"name": "t", "arguments": {"a": 1}}</tool_call>'
PLAN = ToolPlan("auto", (ToolDefinition(type="function", function=FunctionDefinition(name="t")),))


def _split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


class Tail:
    """A tokenizer backend whose every prompt ends in `text`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def decode(self, ids, skip_special_tokens=False) -> str:
        return self.text


def builder(tail: str = "<think>\n", tools: bool = True, include: bool = True) -> ResponseBuilder:
    reasoning = Reasoning(FORMATS["qwen3"], (9,), Tail(tail))
    tool_answer = ToolAnswer(PLAN, AutoParsing("hermes")) if tools else None
    return ResponseBuilder("chatcmpl", "chat.completion", "m", False, None, tool_answer,
                           ChatReasoning(reasoning, [1, 2], include))


def whole(text: str, **kw) -> dict:
    seq = SimpleNamespace(index=0, text=SimpleNamespace(text=text), finish_reason="stop", logprobs=[])
    return builder(**kw).chat_choice(seq)


def streamed(text: str, rng: random.Random, **kw) -> tuple[str, str, list, str | None]:
    responses, thinking, content, calls, finish = builder(**kw), "", "", [], None
    chunks = _split(text, rng)
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        choice = responses._chat_delta(SequenceDelta(0, chunk, [], [], "stop" if last else None))
        if choice is None:
            continue
        delta = choice["delta"]
        assert delta.get("reasoning_content") == delta.get("reasoning")
        thinking += delta.get("reasoning_content") or ""
        content += delta.get("content") or ""
        calls += delta.get("tool_calls") or []
        finish = choice["finish_reason"] or finish
    return thinking, content, calls, finish


CASES = [  # (output, thinking, content, call names, finish)
    (f"I could write {CALL} here.</think>No call.", f"I could write {CALL} here.", "No call.", [], "stop"),
    (f"Let me call.</think>{CALL}", "Let me call.", None, ["t"], "tool_calls"),
    ("All thinking, cut off", "All thinking, cut off", None, [], "stop"),
    ("Short.</think>", "Short.", None, [], "stop"),
]


@pytest.mark.parametrize("text, thinking, content, names, finish", CASES)
def test_tool_calls_are_read_from_the_answer_only(text, thinking, content, names, finish):
    choice = whole(text)
    message = choice["message"]
    assert message["reasoning_content"] == message["reasoning"] == thinking
    assert message["content"] == content and choice["finish_reason"] == finish
    assert [c["function"]["name"] for c in message.get("tool_calls", [])] == names
    rng = random.Random(text)
    for _ in range(20):
        got_thinking, got_content, calls, got_finish = streamed(text, rng)
        assert (got_thinking, got_content or None, got_finish) == (thinking, content, finish)
        assert [c["function"]["name"] for c in calls if "name" in c["function"]] == names


def test_a_prompt_that_closed_the_thinking_gives_all_answer_and_no_gate():
    message = whole("<think>x</think>y", tail="<think>\n\n</think>\n\n", tools=False)["message"]
    assert message == {"role": "assistant", "content": "<think>x</think>y", "reasoning_content": None,
                       "reasoning": None}
    assert Reasoning(FORMATS["qwen3"], (9,), Tail("</think>\n\n")).grammar_trigger([1]) is None
    assert Reasoning(FORMATS["qwen3"], (9, 10), Tail("<think>\n")).grammar_trigger([1]) == [9, 10]


def test_include_reasoning_false_drops_the_fields_not_the_split():
    message = whole("hm</think>ok", include=False, tools=False)["message"]
    assert message == {"role": "assistant", "content": "ok"}


def test_the_server_setup_from_the_flag_and_the_template():
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    assert Reasoning.of("auto", tokenizer) is None  # the demo template marks no thinking
    assert Reasoning.of("none", tokenizer) is None
    named = Reasoning.of("deepseek_r1", tokenizer)
    assert named.fmt is FORMATS["deepseek_r1"]
    assert tokenizer.decode(list(named.end_ids)) == "</think>"
    tokenizer.chat_template = "{{ messages }}{% if x %}<think>\n\n</think>{% endif %}"
    assert Reasoning.of("auto", tokenizer).fmt is FORMATS["qwen3"]


def test_template_variables():
    assert template_kwargs(None, None) is None and template_kwargs({}, None) is None
    assert template_kwargs({"enable_thinking": False}, "low") == {"enable_thinking": False, "reasoning_effort": "low"}
    assert template_kwargs({"reasoning_effort": "high"}, "low") == {"reasoning_effort": "low"}
    for key in ("messages", "tools", "bos_token", "chat_template", "return_tensors", "raise_exception", "a-b"):
        with pytest.raises(APIError) as caught:
            template_kwargs({key: 1}, None)
        assert caught.value.status == 400 and caught.value.param == f"chat_template_kwargs.{key}"
    assert json.dumps(template_kwargs({"nested": {"x": [1]}}, None))
