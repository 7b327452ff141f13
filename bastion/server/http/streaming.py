"""Server-sent events and client-disconnect handling shared by the generation routes."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from bastion.server.http.errors import APIError

logger = logging.getLogger(__name__)
T = TypeVar("T")

DONE = "data: [DONE]\n\n"
# A route's `responses=` for the OpenAPI document: a JSON object, or a stream with "stream": true.
SSE_OR_JSON = {200: {"description": "A JSON object; with \"stream\": true, Server-Sent Events "
                                    "ending with 'data: [DONE]'",
                     "content": {"text/event-stream": {"schema": {
                         "type": "object", "required": ["data"],
                         "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}}}}


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def openai_error_event(error: APIError) -> str:
    """An error inside an OpenAI stream: a `data:` event holding the error body."""
    return sse(error.body())


def sse_response(events: AsyncIterator[str], generation=None, done_marker: bool = True,
                 error_event: Callable[[APIError], str] = openai_error_event) -> StreamingResponse:
    """Stream `events`; an error mid-stream becomes a final error event, as `error_event` writes
    it (then [DONE], unless `done_marker` is false).

    `generation` is closed when the response is over, even if the client left before the stream
    began (a generator that never started runs no `finally`): its engine request is aborted and
    its limits released."""
    async def guarded() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except APIError as exc:
            yield error_event(exc)
        except Exception:
            logger.exception("stream failed")
            yield error_event(APIError(500, "internal server error", code="internal_error"))
        if done_marker:
            yield DONE
    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(generation.close) if generation else None)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def collect_unless_disconnected(request: Request, generation):
    """A whole generation's sequences; it is closed (aborted if unfinished) however this ends."""
    try:
        return await unless_disconnected(request, generation.collect())
    finally:
        await generation.close()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away: a request still waiting for an engine
    slot gives its queue place back and is never submitted; a running one is aborted."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        raise APIError(499, "client closed the request")
    return task.result()
