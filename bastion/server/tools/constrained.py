"""Readers of constrained tool-call output: the grammar already made it a call, so the
arguments stream as the tokens come.

* `NamedCall`: `tool_choice` named a function; the whole text is that call's arguments.
* `CallArray`: `tool_choice: "required"`; the text is a JSON array of
  `{"name": ..., "parameters": {...}}` objects (see `constraint.py`), read one character at a
  time: a call starts when its name is complete, then its `parameters` value streams as the
  call's arguments.
"""
from __future__ import annotations

import json
import re

from bastion.server.tools.calls import CallNumbers, CallPiece, Parsed


class NamedCall:
    """All text is the arguments of one call to `name`."""

    def __init__(self, name: str) -> None:
        self.name, self.numbers = name, CallNumbers()

    def feed(self, text: str) -> Parsed:
        if self.numbers.count == 0:
            return Parsed(calls=[self.numbers.start(self.name, text)])
        return Parsed(calls=[CallPiece(0, text)] if text else [])

    def finish(self) -> Parsed:
        return self.feed("") if self.numbers.count == 0 else Parsed()


class JsonDepth:
    """How deep in JSON containers a character stream is, and whether it is inside a string."""

    def __init__(self) -> None:
        self.depth, self.in_string, self.escape = 0, False, False

    def step(self, ch: str) -> None:
        if self.in_string:
            if self.escape:
                self.escape = False
            elif ch == "\\":
                self.escape = True
            elif ch == '"':
                self.in_string = False
        elif ch == '"':
            self.in_string = True
        elif ch in "[{":
            self.depth += 1
        elif ch in "]}":
            self.depth -= 1


_STRING = r'"(?:[^"\\]|\\.)*"'


class CallArray:
    """A JSON array of `{"name": NAME, KEY: ARGUMENTS}` objects, streamed call by call."""

    def __init__(self, key: str = "parameters") -> None:
        self.key, self.numbers, self.json = key, CallNumbers(), JsonDepth()
        self.header = re.compile(r'\{\s*"name"\s*:\s*(' + _STRING + r')\s*,\s*'
                                 + json.dumps(key) + r'\s*:\s*')
        self.phase = "outside"  # outside -> header -> args -> tail -> outside
        self.element = ""  # an element's text until its header is read

    def feed(self, text: str) -> Parsed:
        pieces: list[CallPiece] = []
        for ch in text:
            before = self.json.depth
            self.json.step(ch)
            piece = self._char(ch, before)
            if piece is not None:
                if pieces and piece.name is None and pieces[-1].index == piece.index:
                    pieces[-1].arguments += piece.arguments
                else:
                    pieces.append(piece)
        return Parsed(calls=pieces)

    def _char(self, ch: str, before: int) -> CallPiece | None:
        depth, quoted = self.json.depth, self.json.in_string or ch == '"'
        if self.phase == "outside":
            if before == 1 and depth == 2:
                self.phase, self.element = "header", ch
            return None
        if self.phase == "header":
            self.element += ch
            if depth < 2:  # the element closed without a header we know: read it whole
                self.phase = "outside"
                return self._whole(self.element)
            match = self.header.fullmatch(self.element)
            if match and not self.json.in_string:
                self.phase = "args"
                return self.numbers.start(json.loads(match.group(1)))
            return None
        if self.phase == "args":
            index = self.numbers.count - 1
            if not quoted and depth == 2 and before == 2 and ch in ",}" or depth < 2:
                self.phase = "outside" if depth < 2 else "tail"
                return None
            if not quoted and before == 2 and ch.isspace():
                return None  # whitespace around a value, not part of it
            if not quoted and depth == 2 and before == 3:
                self.phase = "tail"  # the arguments object (or array) closed
            return CallPiece(index, ch)
        if depth < 2:  # tail: the element closes
            self.phase = "outside"
        return None

    def _whole(self, element: str) -> CallPiece | None:
        try:
            value = json.loads(element)
        except ValueError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str) or self.key not in value:
            return None
        return self.numbers.start(value["name"], json.dumps(value[self.key], ensure_ascii=False))

    def finish(self) -> Parsed:
        return Parsed()
