"""Hermes / Qwen tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks,
any number, with content text around them (NousResearch Hermes 2 Pro, Qwen 2.5 and 3, and the
templates that copy them)."""
from __future__ import annotations

import json

from bastion.server.tools.calls import CallNumbers, ContentGate, Parsed, call_of, held_prefix

START, END = "<tool_call>", "</tool_call>"


class HermesParser:
    """Content streams as it comes (a partial `<tool_call>` held back); each call is read whole
    when its block closes. A block that is not a call stays content, markers included."""

    def __init__(self) -> None:
        self.numbers, self.gate = CallNumbers(), ContentGate()
        self.pending = ""  # content not yet released, or the open block's text
        self.in_call = False

    def feed(self, text: str) -> Parsed:
        self.pending += text
        out = Parsed()
        while True:
            marker = END if self.in_call else START
            pos = self.pending.find(marker)
            if pos < 0:
                break
            body, self.pending = self.pending[:pos], self.pending[pos + len(marker):]
            out += self._block(body) if self.in_call else Parsed(self.gate.text(body))
            if not self.in_call:
                self.gate.drop()
            self.in_call = not self.in_call
        if not self.in_call:
            keep = held_prefix(self.pending, START)
            release, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
            out += Parsed(self.gate.text(release))
        return out

    def _block(self, body: str, end: str = END) -> Parsed:
        """A block's text: a call, or content (markers included) when it is not one."""
        try:
            call = call_of(json.loads(body))
        except ValueError:
            call = None
        if call is None:
            self.gate.undo_drop()
            return Parsed(self.gate.text(START + body + end))
        return Parsed(calls=[self.numbers.start(*call)])

    def finish(self) -> Parsed:
        pending, self.pending = self.pending, ""
        # NOTE: a block that never closed is a call if its JSON is whole
        out = self._block(pending, "") if self.in_call else Parsed(self.gate.text(pending))
        return out + Parsed(self.gate.flush(self.numbers.count > 0))
