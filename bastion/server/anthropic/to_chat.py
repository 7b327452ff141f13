"""An Anthropic Messages body as bastion's chat request: the one conversion, so the Messages
routes take the chat route's path (chat template, tools, structured outputs, sampling, stop
strings, admission and limits) unchanged.

* `system` (a string, or text blocks joined by blank lines) becomes the first, system message.
  Claude Code's `x-anthropic-billing-header` block is left out, as vLLM does: it changes with
  every request and would defeat the prefix cache from the first token.
* A user message's text blocks (joined by newlines) stay a user message; each `tool_result`
  becomes a `tool` message with its `tool_call_id`, in the order given. An assistant message's
  text is its content and its `tool_use` blocks its `tool_calls` (arguments as JSON);
  `thinking` blocks are dropped.
* A last assistant message is a prefill: the answer continues it (`continue_final_message`).
* `tools` become function tools; `tool_choice` `auto`/`any`/`tool`/`none` become `auto`,
  `required`, a named function and `none`; `disable_parallel_tool_use` is
  `parallel_tool_calls: false`. `output_config.format` is a JSON-schema `response_format`.
* `max_tokens` is fitted to the context: a budget larger than the room the prompt leaves is cut
  to that room (vLLM's and llama-server's way), not refused as on the OpenAI routes.

Refusals raised on the chat path name the chat request's fields; `anthropic_error` renames
them to the fields the client wrote.
"""
from __future__ import annotations

import json
import re

from pydantic import ValidationError

from bastion.server.anthropic.request import (AssistantMessage, CountTokensRequest, MessagesRequest,
                                              TextBlock, ToolChoiceAny, ToolChoiceNone, ToolChoiceTool,
                                              ToolResultBlock, ToolUseBlock)
from bastion.server.http.errors import APIError
from bastion.server.prompt import Budget
from bastion.server.routes.protocol import ChatCompletionRequest

BILLING_HEADER = "x-anthropic-billing-header"
_SCHEMA_NAME = "output"


class AnthropicChat(ChatCompletionRequest):
    """The chat request a Messages body becomes; its budget is `max_tokens` fitted to the context."""

    def budget(self) -> Budget:
        return Budget(None, self.max_tokens, "max_tokens")


def to_chat(body: CountTokensRequest) -> AnthropicChat:
    """The chat request of a Messages (or count_tokens) body; a 400 for a refused field."""
    body.check()
    messages = _system(body.system) + [m for msg in body.messages for m in _messages(msg)]
    prefill = isinstance(body.messages[-1], AssistantMessage) and "tool_calls" not in messages[-1]
    fields = {"model": body.model, "messages": messages, "add_generation_prompt": not prefill,
              "continue_final_message": prefill, **_tool_fields(body)}
    if body.output_config is not None and body.output_config.format is not None:
        fields["response_format"] = {"type": "json_schema", "json_schema": {
            "name": _SCHEMA_NAME, "schema": body.output_config.format.schema_}}
    if isinstance(body, MessagesRequest):
        fields.update(max_tokens=body.max_tokens, stream=body.stream, stop=body.stop_sequences,
                      temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)
    try:
        return AnthropicChat.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:  # NOTE: the body's own shapes are stricter; kept as a 400 all the same
        raise APIError(400, f"the request cannot be read as a chat: {exc.errors()[0].get('msg')}") from None


def _system(system: str | list[TextBlock] | None) -> list[dict]:
    if isinstance(system, list):
        system = "\n\n".join(b.text for b in system if not b.text.startswith(BILLING_HEADER))
    return [{"role": "system", "content": system}] if system else []


def _messages(message) -> list[dict]:
    """The chat messages of one Anthropic message (a user message may give several)."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    if isinstance(message, AssistantMessage):
        text = "\n".join(b.text for b in message.content if isinstance(b, TextBlock))
        calls = [{"id": b.id, "type": "function",
                  "function": {"name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)}}
                 for b in message.content if isinstance(b, ToolUseBlock)]
        return [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]
    out: list[dict] = []
    texts: list[str] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            if texts:
                out.append({"role": "user", "content": "\n".join(texts)})
                texts = []
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text()})
        else:
            texts.append(block.text)
    if texts or not out:
        out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _tool_fields(body: CountTokensRequest) -> dict:
    tools = [{"type": "function", "function": {
        "name": t.name, "parameters": t.input_schema, **({"description": t.description} if t.description else {})}}
        for t in body.tools or []]
    choice = body.tool_choice
    fields: dict = {"tools": tools or None}
    if choice is None:
        return fields
    if isinstance(choice, ToolChoiceTool):
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if not isinstance(choice, ToolChoiceNone) and choice.disable_parallel_tool_use:
        fields["parallel_tool_calls"] = False
    elif isinstance(choice, ToolChoiceAny):
        fields["parallel_tool_calls"] = True
    return fields


# The chat request's fields, as the Messages body names them.
_RENAMES = [(re.compile(r"^tools\.(\d+)\.function\.parameters"), r"tools.\1.input_schema"),
            (re.compile(r"^tools\.(\d+)\.function\.name"), r"tools.\1.name"),
            (re.compile(r"^tool_choice\.function\.name"), "tool_choice.name"),
            (re.compile(r"^response_format(\.json_schema\.schema)?"), "output_config.format.schema"),
            (re.compile(r"^max_completion_tokens$"), "max_tokens"),
            (re.compile(r"^stop$"), "stop_sequences")]


def anthropic_param(param: str | None) -> str | None:
    """The Messages body's name of a chat request's field."""
    if param is None:
        return None
    for pattern, name in _RENAMES:
        if pattern.match(param):
            return pattern.sub(name, param)
    return param


_QUOTED = re.compile(r"'([A-Za-z_][A-Za-z0-9_.]*)'")


def anthropic_error(error: APIError) -> APIError:
    """`error` naming the Messages body's fields (in its message too) instead of the chat one's."""
    message = _QUOTED.sub(lambda m: f"'{anthropic_param(m.group(1))}'", error.message)
    return APIError(error.status, message, anthropic_param(error.param), error.code, error.headers)
