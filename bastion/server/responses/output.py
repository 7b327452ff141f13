"""Where a sequence's text becomes output items: the one place, streamed or whole.

`OutputItems.feed` takes the text a sequence released (and, last, its finish reason) and says
what happened to the response's `output` list: an item opened, text or call arguments added to
it, an item closed. Text is a `message` item with one `output_text` part; a tool call (read by
`server/tools/` as chat's are: `ToolAnswer`) is a `function_call` item; an item closes when the
next one opens, and every item closes when the sequence finishes (`incomplete` when it ran out
of tokens). A whole answer is fed at once, so the stream and the whole answer give the same
items by construction.

With a reasoning parser on (server/reasoning/), the text is split before `_answer` sees it:
the thinking is a `reasoning` item (one `reasoning_text` content part, an empty `summary`)
ahead of the answer's items, and only the answer goes on to `_answer` (tool calls and text).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from bastion.server.reasoning.splitter import ReasoningSplitter
from bastion.server.tools.shaping import ToolAnswer


def item_id(prefix: str) -> str:
    """A fresh output item id (`msg_...`, `fc_...`), OpenAI's shape."""
    return f"{prefix}_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class ItemEvent:
    """`kind`: "added", "text" (`delta` appended to a message's or a reasoning item's text),
    "arguments" (`delta` appended to a call's arguments) or "done", for the item at `index` of
    the output."""

    kind: str
    index: int
    delta: str = ""


class OutputItems:
    """The output items of one sequence, built as its text arrives. `thinking` splits the
    model's thinking from its answer (None: no reasoning parser, all is answer)."""

    def __init__(self, tools: ToolAnswer | None, thinking: ReasoningSplitter | None = None) -> None:
        self.tools, self.thinking = tools, thinking
        self.items: list[dict] = []
        self._open: int | None = None  # the item text or arguments go to
        self._calls: dict[int, int] = {}  # a call's index in its message -> its item

    def feed(self, text: str, finish_reason: str | None = None) -> list[ItemEvent]:
        """The items' changes for the next `text`; with `finish_reason`, every item closes."""
        events: list[ItemEvent] = []
        if self.thinking is not None:
            split = self.thinking.feed(text)
            if finish_reason is not None:
                split += self.thinking.finish()
            if split.reasoning:
                events += self._text(split.reasoning, "reasoning")
            text = split.content
        events += self._answer(text, finish_reason)
        if finish_reason is not None:
            events += self._close("incomplete" if finish_reason == "length" else "completed")
        return events

    def cut(self) -> None:
        """The sequence failed midway: the item it was making ends `incomplete`."""
        self._close("incomplete")

    def _answer(self, text: str, finish_reason: str | None) -> list[ItemEvent]:
        if self.tools is None:
            content, pieces = text, []
        else:
            delta, _ = self.tools.delta(0, text, finish_reason)
            content, pieces = delta.get("content", ""), delta.get("tool_calls", [])
        events = self._text(content) if content else []
        for piece in pieces:
            events += self._call_piece(piece)
        return events

    def _text(self, text: str, kind: str = "message") -> list[ItemEvent]:
        """Text of a `message` item (the answer) or of a `reasoning` item (the thinking)."""
        events = []
        if self._open is None or self.items[self._open]["type"] != kind:
            fresh = ({"id": item_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                      "content": [{"type": "output_text", "text": "", "annotations": []}]} if kind == "message"
                     else {"id": item_id("rs"), "type": "reasoning", "status": "in_progress", "summary": [],
                           "content": [{"type": "reasoning_text", "text": ""}]})
            events = self._close("completed") + self._add(fresh)
        self.items[self._open]["content"][0]["text"] += text
        return events + [ItemEvent("text", self._open, text)]

    def _call_piece(self, piece: dict) -> list[ItemEvent]:
        function, events = piece["function"], []
        if "name" in function:
            events = self._close("completed") + self._add({
                "id": item_id("fc"), "type": "function_call", "status": "in_progress",
                "call_id": piece["id"], "name": function["name"], "arguments": ""})
            self._calls[piece["index"]] = self._open
        index = self._calls.get(piece["index"])
        if index is None or not function["arguments"]:
            return events
        self.items[index]["arguments"] += function["arguments"]
        return events + [ItemEvent("arguments", index, function["arguments"])]

    def _add(self, item: dict) -> list[ItemEvent]:
        self.items.append(item)
        self._open = len(self.items) - 1
        return [ItemEvent("added", self._open)]

    def _close(self, status: str) -> list[ItemEvent]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        self.items[index]["status"] = status
        return [ItemEvent("done", index)]
