"""The answers of `POST /v1/messages`: a whole `message` object, or Anthropic's SSE events.

A stream is `message_start` (the message with no content yet, input tokens counted), one
`ping`, each block's `content_block_start` / `content_block_delta` / `content_block_stop`
(`blocks.py`), `message_delta` (stop reason, stop sequence, output tokens), `message_stop`;
every event has its `event:` line, as Anthropic sends them. An error after the stream began is
an `error` event in Anthropic's shape (`error_event`).
"""
from __future__ import annotations

import json
import uuid
from typing import AsyncIterator, Callable

from bastion.server.anthropic.blocks import ContentBlocks
from bastion.server.generation import Generation, SequenceState
from bastion.server.http.errors import APIError, anthropic_error_body
from bastion.server.reasoning.splitter import ReasoningSplitter
from bastion.server.tools.shaping import ToolAnswer

# A sequence's finish reason as Anthropic's stop reason ("stop" by a stop string: stop_sequence).
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "abort": "end_turn"}


def event(payload: dict) -> str:
    """One SSE event named by its payload's `type`."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n"


def error_event(error: APIError) -> str:
    """An error inside a Messages stream, as Anthropic sends one."""
    return event(anthropic_error_body(error.status, error.message, error.param))


class MessageAnswer:
    """Builds the answer of one Messages request, whole or streamed. `tools` makes a fresh
    tool-call reader for a sequence (it returns None when the request has no tools); `thinking`
    a fresh reasoning splitter (None when the server reads no thinking: all is answer)."""

    def __init__(self, model: str, tools: Callable[[], ToolAnswer | None],
                 thinking: Callable[[], ReasoningSplitter | None] = lambda: None) -> None:
        self.id = f"msg_{uuid.uuid4().hex}"
        self.model, self.tools, self.thinking = model, tools, thinking

    def message(self, seq: SequenceState, generation: Generation) -> dict:
        """The whole answer of a sequence that has finished."""
        blocks = ContentBlocks(self.tools(), self.thinking())
        blocks.feed(seq.text.text, seq.finish_reason)
        return {**self._envelope(blocks.content()), **self._stop(seq, blocks),
                "usage": {"input_tokens": generation.prompt_tokens,
                          "output_tokens": generation.completion_tokens}}

    async def events(self, generation: Generation) -> AsyncIterator[str]:
        """The stream of one generation (one sequence: the Messages API has no `n`)."""
        start = {**self._envelope([]), "stop_reason": None, "stop_sequence": None,
                 "usage": {"input_tokens": generation.prompt_tokens, "output_tokens": 0}}
        yield event({"type": "message_start", "message": start}) + event({"type": "ping"})
        blocks = ContentBlocks(self.tools(), self.thinking())
        async for deltas in generation.deltas():
            made = [e for d in deltas for e in blocks.feed(d.text, d.finish_reason)]
            if made:
                yield "".join(map(event, made))
        yield event({"type": "message_delta", "delta": self._stop(generation.seqs[0], blocks),
                     "usage": {"output_tokens": generation.completion_tokens}}) \
            + event({"type": "message_stop"})

    def _envelope(self, content: list[dict]) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": content}

    @staticmethod
    def _stop(seq: SequenceState, blocks: ContentBlocks) -> dict:
        """`stop_reason` and `stop_sequence` of a finished sequence."""
        reason = blocks.finish_reason or seq.finish_reason
        if reason != "tool_calls" and seq.text.stopped_by is not None:
            return {"stop_reason": "stop_sequence", "stop_sequence": seq.text.stopped_by}
        return {"stop_reason": STOP_REASONS.get(reason, "end_turn"), "stop_sequence": None}
