"""What a tool parser reports: text for `content`, and tool-call pieces in the OpenAI shape.

Every parser is a streaming machine (`feed` text as it is released, then `finish`); a whole
answer is parsed by feeding it at once (`parse_all`), so a streamed answer and a whole one are
the same by construction. A call's first piece carries its id and name, later ones only
`arguments` fragments; joined in order they give the call (`assemble`).
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Protocol


def call_id() -> str:
    """A fresh tool-call id, `call_` and 24 random hex digits (OpenAI's shape)."""
    return f"call_{secrets.token_hex(12)}"


@dataclass
class CallPiece:
    """A piece of the tool call numbered `index` in its message: the first carries id and name."""

    index: int
    arguments: str = ""
    name: str | None = None
    id: str | None = None

    def delta(self) -> dict:
        """The piece as one entry of a streamed `delta.tool_calls`."""
        if self.name is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Parsed:
    """What a stretch of model text turned into: content text and call pieces, in that order."""

    content: str = ""
    calls: list[CallPiece] = field(default_factory=list)

    def __add__(self, other: "Parsed") -> "Parsed":
        return Parsed(self.content + other.content, self.calls + other.calls)


class ToolParser(Protocol):
    """Reads tool calls from one sequence's text as it streams."""

    def feed(self, text: str) -> Parsed:
        """Take the next released text; return what is certain so far."""

    def finish(self) -> Parsed:
        """The text ended: flush whatever is held back."""


@dataclass
class ToolCall:
    """A whole call: `arguments` is a JSON string."""

    id: str
    name: str
    arguments: str

    def message_entry(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


def assemble(pieces: list[CallPiece]) -> list[ToolCall]:
    """Whole calls from their pieces (the first of each index names it)."""
    calls: dict[int, ToolCall] = {}
    for piece in pieces:
        if piece.index not in calls:
            calls[piece.index] = ToolCall(piece.id or call_id(), piece.name or "", "")
        calls[piece.index].arguments += piece.arguments
    return [calls[i] for i in sorted(calls)]


def parse_all(parser: ToolParser, text: str) -> tuple[str, list[ToolCall]]:
    """A whole answer: its content (text outside calls) and its calls."""
    parsed = parser.feed(text) + parser.finish()
    return parsed.content, assemble(parsed.calls)


class CallNumbers:
    """Numbers the calls of one message and makes their first pieces."""

    def __init__(self) -> None:
        self.count = 0

    def start(self, name: str, arguments: str = "") -> CallPiece:
        piece = CallPiece(self.count, arguments, name, call_id())
        self.count += 1
        return piece


class ContentGate:
    """Content text without the whitespace that only pads calls: trailing whitespace is held
    back (released when more text follows, or at the end when no call came), and whitespace
    before the first content is skipped once a call came."""

    def __init__(self) -> None:
        self.held, self.released, self.after_call = "", False, False
        self._before = ("", False)

    def text(self, text: str) -> str:
        """Content to release now for `text`."""
        whole = self.held + text
        if self.after_call and not self.released:
            whole = whole.lstrip()
        body = whole.rstrip()
        self.held = whole[len(body):]
        self.released = self.released or bool(body)
        return body

    def drop(self) -> None:
        """A call may come here: the whitespace held before it is not content."""
        self._before = (self.held, self.after_call)
        self.held, self.after_call = "", True

    def undo_drop(self) -> None:
        """It was no call after all: as before `drop`."""
        self.held, self.after_call = self._before

    def flush(self, had_calls: bool) -> str:
        held, self.held = self.held, ""
        return "" if had_calls else held


def held_prefix(text: str, marker: str) -> int:
    """How many characters at the end of `text` could start `marker` (to hold back)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


def call_of(value) -> tuple[str, str] | None:
    """(name, arguments as JSON text) of a decoded call object `{"name", "arguments"}` (Llama's
    `"parameters"` too); None for anything else."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            json.loads(arguments)
        except ValueError:
            return None
        return value["name"], arguments
    if not isinstance(arguments, dict):
        return None
    return value["name"], json.dumps(arguments, ensure_ascii=False)
