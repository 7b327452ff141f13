"""Mistral tool calls: `[TOOL_CALLS]` then a JSON array of `{"name", "arguments"}` objects
(v3 tokenizers), or `[TOOL_CALLS]name[ARGS]{...}` per call (v11 and later), after any content.

`[TOOL_CALLS]` is a special token in Mistral's tokenizers, so with `skip_special_tokens` (the
default) it is gone from the text: a message that is a bare array of call objects is read as
calls too."""
from __future__ import annotations

import re

from bastion.server.tools.calls import (CallNumbers, ContentGate, Parsed, call_of, held_prefix)
from bastion.server.tools.llama3_json import read_objects

MARKER, ARGS = "[TOOL_CALLS]", "[ARGS]"
_BARE_START = re.compile(r"\[\s*\{")
_NAMED = re.compile(r"\s*([A-Za-z0-9_.\-]+)\[ARGS\]")


def read_calls(body: str) -> list[tuple[str, str]] | None:
    """The calls after the marker: a JSON array of call objects, or `name[ARGS]{...}` each."""
    if body.lstrip().startswith("["):
        values = read_objects(body, "")
        if values is None or len(values) != 1 or not isinstance(values[0], list) or not values[0]:
            return None
        calls = [call_of(v) for v in values[0]]
        return calls if all(calls) else None
    calls = []
    for part in body.split(MARKER):
        match = _NAMED.match(part)
        values = read_objects(part[match.end():], "") if match else None
        if not values or len(values) != 1 or not isinstance(values[0], dict):
            return None
        calls.append(call_of({"name": match.group(1), "arguments": values[0]}))
    return calls if calls and all(calls) else None


class MistralParser:
    """Content streams until `[TOOL_CALLS]` (a partial marker held back); the calls after it are
    held and read at the end. A message whose calls do not read stays content."""

    def __init__(self) -> None:
        self.numbers, self.gate = CallNumbers(), ContentGate()
        self.mode = "start"  # -> content | calls | bare
        self.pending = ""

    def feed(self, text: str) -> Parsed:
        self.pending += text
        if self.mode == "start":
            start = self.pending.lstrip()
            if not start or MARKER.startswith(start) or re.fullmatch(r"\[\s*", start):
                return Parsed()
            self.mode = "bare" if _BARE_START.match(start) else "content"
        if self.mode != "content":
            return Parsed()  # the calls are read whole at the end
        pos = self.pending.find(MARKER)
        if pos >= 0:
            content, self.pending = self.pending[:pos], self.pending[pos + len(MARKER):]
            self.mode = "calls"
            out = Parsed(self.gate.text(content))
            self.gate.drop()
            return out
        keep = held_prefix(self.pending, MARKER)
        release = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(release):]
        return Parsed(self.gate.text(release))

    def finish(self) -> Parsed:
        text, self.pending = self.pending, ""
        if self.mode in ("calls", "bare"):
            calls = read_calls(text)
            if calls:
                return Parsed(calls=[self.numbers.start(*call) for call in calls])
            text = (MARKER if self.mode == "calls" else "") + text
        return Parsed(self.gate.text(text)) + Parsed(self.gate.flush(self.numbers.count > 0))
