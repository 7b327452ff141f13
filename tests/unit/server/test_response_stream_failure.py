"""A streamed response whose generation fails midway (a rank lost) ends with `error` then
`response.failed`, carrying what was made so far; nothing is kept."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from bastion.server.generation import SequenceDelta
from bastion.server.http.errors import APIError
from bastion.server.responses.chat_body import ResponsesChatBody
from bastion.server.responses.envelope import ResponseEnvelope
from bastion.server.responses.request import ResponsesRequest
from bastion.server.responses.turn import ResponseTurn


class FailingGeneration:
    """Gives one piece of text, then fails as a lost rank does."""

    prompt_tokens, completion_tokens, num_cached_tokens = 5, 1, 0

    async def deltas(self):
        yield [SequenceDelta(0, "Hello", [1], [])]
        raise APIError(503, "engine rank 0 is unavailable; the request was not completed")


def test_a_failure_midway_is_an_error_event_then_response_failed():
    body = ResponsesRequest.model_validate({"model": "m", "input": "hi", "stream": True})
    kept = []
    keeping = SimpleNamespace(enabled=True, keep=lambda *a: kept.append(a))
    turn = ResponseTurn(body, SimpleNamespace(reasoning=None), None, keeping)
    turn.chat, turn.envelope = ResponsesChatBody(body, []), ResponseEnvelope(body, "m", True)

    async def run() -> list[dict]:
        return [json.loads(text.split("data: ", 1)[1]) async for text in turn.events(FailingGeneration())]

    events = asyncio.run(run())
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta", "error", "response.failed"]
    assert [e["sequence_number"] for e in events] == list(range(7))
    assert events[-2]["code"] == "503" and "unavailable" in events[-2]["message"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "503"
    assert failed["output"][0]["content"][0]["text"] == "Hello" and failed["output"][0]["status"] == "incomplete"
    assert failed["usage"]["output_tokens"] == 1
    assert kept == []
