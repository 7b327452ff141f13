"""Tool calls and tool results in the conversation, as chat templates read them.

An assistant message's `tool_calls` carry their arguments as a JSON string (OpenAI's shape);
templates expect a dict (the Transformers convention, and what vLLM passes), so the string is
parsed here, and a string that is not a JSON object is a 400 naming it. A `role: "tool"`
message keeps its `tool_call_id` (and `name`)."""
from __future__ import annotations

import json
from typing import Literal

from bastion.server.http.errors import APIError
from bastion.server.tools.request import Fixed


class CalledFunction(Fixed):
    name: str
    arguments: str


class AssistantToolCall(Fixed):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


def template_message(message: dict, tool_calls: list[AssistantToolCall] | None,
                     tool_call_id: str | None, field: str) -> dict:
    """`message` (role, content text, name) with its tool calls or tool-call id, for the template."""
    if tool_calls is not None:
        if message["role"] != "assistant":
            raise APIError(400, "only assistant messages carry 'tool_calls'", f"{field}.tool_calls")
        message["tool_calls"] = [_call(call, f"{field}.tool_calls.{i}") for i, call in enumerate(tool_calls)]
    if tool_call_id is not None:
        message["tool_call_id"] = tool_call_id
    return message


def _call(call: AssistantToolCall, field: str) -> dict:
    try:
        arguments = json.loads(call.function.arguments) if call.function.arguments.strip() else {}
    except ValueError as exc:
        raise APIError(400, f"the arguments of a tool call must be a JSON object: {exc}",
                       f"{field}.function.arguments") from None
    if not isinstance(arguments, dict):
        raise APIError(400, "the arguments of a tool call must be a JSON object",
                       f"{field}.function.arguments")
    return {"id": call.id, "type": "function",
            "function": {"name": call.function.name, "arguments": arguments}}
