"""Input items as the chat template reads them: messages, assistant tool calls, tool results.

* a message: its role and its text (parts joined);
* `function_call` items: `tool_calls` of an assistant message (the one just before, when the
  conversation's last message is the assistant's, as a model's text then calls; else a new one),
  their `arguments` parsed (a JSON object, as chat templates expect; else a 400 naming it);
* a `function_call_output`: a `tool` message with its `tool_call_id` (and the call's name);
* a `reasoning` item: not shown to the model (chat templates drop earlier thinking).

`instructions` come first as a system message; they belong to one request and are not kept for
its follow-ups (OpenAI's rule)."""
from __future__ import annotations

import json

from bastion.server.http.errors import APIError
from bastion.server.responses.request import (FunctionCallItem, FunctionCallOutputItem, MessageItem)


def chat_messages(instructions: str | None, items: list[tuple[object, str]]) -> list[dict]:
    """The template's messages for `items`, each with the body field it came from."""
    messages: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    names: dict[str, str] = {}
    for item, field in items:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": _arguments(item.arguments, field)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            message = {"role": "tool", "content": item.text(), "tool_call_id": item.call_id}
            if item.call_id in names:
                message["name"] = names[item.call_id]
            messages.append(message)
    return messages


def _arguments(text: str, field: str) -> dict:
    try:
        arguments = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise APIError(400, f"the arguments of a function call must be a JSON object: {exc}",
                       f"{field}.arguments") from None
    if not isinstance(arguments, dict):
        raise APIError(400, "the arguments of a function call must be a JSON object", f"{field}.arguments")
    return arguments
