"""Calls written as the whole message: JSON objects `{"name": ..., "parameters"/"arguments":
{...}}`. Llama 3.x's format (several joined by `;`, optionally after `<|python_tag|>`, a special
token usually gone from the text already), and Hermes calls whose `<tool_call>` markers the
tokenizer made special tokens, so that only the bare object is left. A message that starts
otherwise goes to another parser, or is content, streamed as it comes."""
from __future__ import annotations

import json

from bastion.server.tools.calls import CallNumbers, Parsed, ToolParser, call_of

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


class WholeMessageCalls:
    """Undecided while only whitespace (or part of `tag`) came; a message that starts with `{`
    or the tag is held whole and read at the end (content if it is not calls), any other goes
    to `otherwise` (None: it is content)."""

    def __init__(self, tag: str = "", separators: str = "", otherwise: ToolParser | None = None) -> None:
        self.tag, self.separators, self.otherwise = tag, separators, otherwise
        self.numbers = CallNumbers()
        self.mode = "undecided"  # -> otherwise | calls
        self.pending = ""

    def feed(self, text: str) -> Parsed:
        if self.mode == "otherwise":
            return self.otherwise.feed(text) if self.otherwise else Parsed(text)
        self.pending += text
        if self.mode == "undecided":
            start = self.pending.lstrip()
            if start.startswith("{") or (self.tag and start.startswith(self.tag)):
                self.mode = "calls"
            elif start and not (self.tag and self.tag.startswith(start)):
                self.mode = "otherwise"
                pending, self.pending = self.pending, ""
                return self.feed(pending)
        return Parsed()

    def finish(self) -> Parsed:
        if self.mode == "otherwise":
            return self.otherwise.finish() if self.otherwise else Parsed()
        text, self.pending = self.pending, ""
        if self.mode == "calls":
            body = text.lstrip()
            body = body[len(self.tag):] if self.tag and body.startswith(self.tag) else body
            calls = [call_of(v) for v in read_objects(body, self.separators) or [None]]
            if all(calls):
                return Parsed(calls=[self.numbers.start(*call) for call in calls])
        return self.otherwise.feed(text) + self.otherwise.finish() if self.otherwise else Parsed(text)


class Llama3JsonParser(WholeMessageCalls):
    """Llama 3.x: `<|python_tag|>`? then call objects joined by `;`; anything else is content."""

    def __init__(self) -> None:
        super().__init__(PYTHON_TAG, ";")
