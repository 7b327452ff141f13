"""Llama 3.x JSON tool calls: the whole message is `{"name": ..., "parameters": {...}}`
(several joined by `;`), optionally after `<|python_tag|>` (a special token, so usually gone
from the text already). A message that starts otherwise is content, streamed as it comes."""
from __future__ import annotations

import json

from bastion.server.tools.calls import CallNumbers, Parsed, call_of

PYTHON_TAG = "<|python_tag|>"


def read_objects(text: str, separators: str) -> list | None:
    """The JSON values of `text`, written one after another with `separators` (and
    whitespace) between them; None unless the whole text is such values."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] in separators):
            pos += 1
        if pos == len(text):
            return values or None
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return None
        values.append(value)


class Llama3JsonParser:
    """Undecided while only whitespace (or part of `<|python_tag|>`) came; a message that
    starts with `{` or the tag is held whole and read at the end, any other is content."""

    def __init__(self) -> None:
        self.numbers = CallNumbers()
        self.mode = "undecided"  # -> content | calls
        self.pending = ""

    def feed(self, text: str) -> Parsed:
        if self.mode == "content":
            return Parsed(text)
        self.pending += text
        if self.mode == "undecided":
            start = self.pending.lstrip()
            if start.startswith(PYTHON_TAG) or start.startswith("{"):
                self.mode = "calls"
            elif start and not PYTHON_TAG.startswith(start):
                self.mode = "content"
                pending, self.pending = self.pending, ""
                return Parsed(pending)
        return Parsed()

    def finish(self) -> Parsed:
        text, self.pending = self.pending, ""
        if self.mode == "calls":
            body = text.lstrip()
            body = body[len(PYTHON_TAG):] if body.startswith(PYTHON_TAG) else body
            calls = [call_of(v) for v in read_objects(body, ";") or [None]]
            if all(calls):
                return Parsed(calls=[self.numbers.start(*call) for call in calls])
        return Parsed(text)
