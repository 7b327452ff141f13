"""One sequence's text as Anthropic content blocks, built as the text arrives.

`ContentBlocks.feed` takes each piece of released text (and, last, the finish reason) and
returns the stream events it made (`content_block_start`, `content_block_delta` with a
`text_delta` or `input_json_delta`, `content_block_stop`); `content()` gives the blocks made so
far. A whole answer is one `feed`, so a streamed answer and a whole one are the same blocks by
construction.

With a reasoning parser on (server/reasoning/), `ContentBlocks.sections` splits released text
into `(kind, text)` pieces: the thinking becomes `thinking` blocks (`thinking_delta`), and only
the answer (`"text"`) goes on to the tool-call parser.
"""
from __future__ import annotations

import json

from bastion.server.reasoning.splitter import ReasoningSplitter
from bastion.server.tools.shaping import ToolAnswer

# What each kind of text block starts as, and the delta that grows it.
_STARTS = {"text": {"type": "text", "text": ""},
           "thinking": {"type": "thinking", "thinking": "", "signature": ""}}
_DELTAS = {"text": "text_delta", "thinking": "thinking_delta"}


def tool_use_id(call_id: str) -> str:
    """Anthropic's `toolu_` id for a tool call's id (`call_` and random hex digits)."""
    return "toolu_" + call_id.removeprefix("call_")


class ContentBlocks:
    """The content blocks of one sequence. `tools` reads tool calls from the answer's text
    (None: the text is all text blocks); `thinking` splits the model's thinking from its answer
    (None: no reasoning parser, all is answer); `finish_reason` is the sequence's, "tool_calls"
    once a call was made and the sequence ended normally."""

    def __init__(self, tools: ToolAnswer | None, thinking: ReasoningSplitter | None = None) -> None:
        self.tools, self.thinking = tools, thinking
        self.blocks: list[dict] = []
        self.finish_reason: str | None = None
        self._open: int | None = None  # the block still growing
        self._call_blocks: dict[int, int] = {}  # a call's index -> its block's
        self._arguments: dict[int, str] = {}  # a tool_use block's index -> its input JSON so far

    def sections(self, text: str, last: bool) -> list[tuple[str, str]]:
        """Released text as `(kind, text)` pieces, in order: `"thinking"`, then `"text"` (the
        answer); `last`: the sequence ended, so text held back for a possible marker is let go."""
        if self.thinking is None:
            return [("text", text)] if text else []
        split = self.thinking.feed(text)
        if last:
            split += self.thinking.finish()
        return [(kind, piece) for kind, piece in (("thinking", split.reasoning), ("text", split.content)) if piece]

    def feed(self, text: str, finish_reason: str | None = None) -> list[dict]:
        """Take the next released text (with the finish reason on the last); the events made."""
        events: list[dict] = []
        for kind, piece in self.sections(text, finish_reason is not None):
            events += self._answer(piece, None) if kind == "text" else self._grow(kind, piece)
        if finish_reason is not None:
            events += self._answer("", finish_reason)
            events += self._close()
        return events

    def content(self) -> list[dict]:
        """The blocks so far, each tool_use with its `input` as an object."""
        return [{**block, "input": _input(self._arguments[i])} if block["type"] == "tool_use" else dict(block)
                for i, block in enumerate(self.blocks)]

    def _answer(self, text: str, finish_reason: str | None) -> list[dict]:
        """Answer text: through the tool-call parser when there are tools."""
        if self.tools is None:
            self.finish_reason = finish_reason or self.finish_reason
            return self._grow("text", text) if text else []
        delta, finish = self.tools.delta(0, text, finish_reason)
        self.finish_reason = finish or self.finish_reason
        events = self._grow("text", delta["content"]) if delta.get("content") else []
        for piece in delta.get("tool_calls", []):
            events += self._call(piece)
        return events

    def _grow(self, kind: str, text: str) -> list[dict]:
        events: list[dict] = []
        if self._open is None or self.blocks[self._open]["type"] != kind:
            events += self._start(dict(_STARTS[kind]))
        self.blocks[self._open][kind] += text
        return events + [{"type": "content_block_delta", "index": self._open,
                          "delta": {"type": _DELTAS[kind], kind: text}}]

    def _call(self, piece: dict) -> list[dict]:
        """A piece of a tool call (OpenAI's delta shape): the first starts a tool_use block."""
        events: list[dict] = []
        function = piece["function"]
        if "id" in piece:
            events += self._start({"type": "tool_use", "id": tool_use_id(piece["id"]),
                                   "name": function["name"], "input": {}})
            self._call_blocks[piece["index"]] = self._open
            self._arguments[self._open] = ""
        index = self._call_blocks[piece["index"]]
        if function["arguments"]:
            self._arguments[index] += function["arguments"]
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": function["arguments"]}})
        return events

    def _start(self, block: dict) -> list[dict]:
        events = self._close()
        self.blocks.append(block)
        self._open = len(self.blocks) - 1
        return events + [{"type": "content_block_start", "index": self._open, "content_block": dict(block)}]

    def _close(self) -> list[dict]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [{"type": "content_block_stop", "index": index}]


def _input(arguments: str) -> dict:
    """A tool call's input: its JSON object (an empty one when the text was cut off)."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
