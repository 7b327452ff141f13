"""Tool calls in a chat answer: the message of a whole answer and the deltas of a stream.

A sequence that made a call and ended normally finishes with "tool_calls"; its `content` is the
text outside the calls, or null when there is none. Streamed, each chunk's delta carries the
content and call pieces its text gave (`delta.tool_calls`: the first piece of a call has
index, id, type and name, later ones only argument fragments), so the deltas joined give the
same message as the whole answer. With `parallel_tool_calls: false` an `auto` answer keeps its
first call only (a forced one never makes more).
"""
from __future__ import annotations

from bastion.server.tools.calls import ToolParser, parse_all
from bastion.server.tools.choose import AutoParsing, parser_of
from bastion.server.tools.request import ToolPlan


class ToolAnswer:
    """Reads and shapes the tool calls of one chat request's sequences."""

    def __init__(self, plan: ToolPlan, auto: AutoParsing, skip_special_tokens: bool = True) -> None:
        self.plan, self.auto, self.skip_special_tokens = plan, auto, skip_special_tokens
        self._streams: dict[int, ToolParser] = {}
        self._called: set[int] = set()

    def _parser(self) -> ToolParser | None:
        return parser_of(self.plan, self.auto, self.skip_special_tokens)

    def message(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        """A whole answer's message and finish reason."""
        parser = self._parser()
        if parser is None:
            return {"role": "assistant", "content": text}, finish_reason
        content, calls = parse_all(parser, text)
        calls = calls if self.plan.parallel else calls[:1]
        if not calls:
            return {"role": "assistant", "content": content}, finish_reason
        return ({"role": "assistant", "content": content or None,
                 "tool_calls": [call.message_entry() for call in calls]},
                _finish(finish_reason, True))

    def delta(self, index: int, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        """The delta of one streamed chunk of sequence `index`, and its finish reason."""
        if index not in self._streams:
            parser = self._parser()
            if parser is None:
                return ({"content": text} if text else {}), finish_reason
            self._streams[index] = parser
        parser = self._streams[index]
        parsed = parser.feed(text)
        if finish_reason is not None:
            parsed += parser.finish()
        delta: dict = {"content": parsed.content} if parsed.content else {}
        pieces = [p for p in parsed.calls if self.plan.parallel or p.index == 0]
        if pieces:
            self._called.add(index)
            delta["tool_calls"] = [piece.delta() for piece in pieces]
        return delta, _finish(finish_reason, index in self._called)


def _finish(reason: str | None, called: bool) -> str | None:
    return "tool_calls" if called and reason == "stop" else reason

