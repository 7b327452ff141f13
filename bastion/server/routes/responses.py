"""OpenAI's Responses API: `POST /v1/responses` (whole or streamed), `GET` and `DELETE
/v1/responses/{response_id}` (a stored response, only its creator's)."""
from __future__ import annotations

from fastapi import APIRouter, Request

from bastion.security.auth import requires
from bastion.server.http.errors import refusals
from bastion.server.http.middleware import caller_of
from bastion.server.http.streaming import collect_unless_disconnected, sse_response, unless_disconnected
from bastion.server.responses.continuation import ResponseKeeping
from bastion.server.responses.request import ResponsesRequest
from bastion.server.responses.turn import ResponseTurn
from bastion.server.routes import frontend_of

router = APIRouter()

# The answer: a Response object; with "stream": true, typed Server-Sent Events.
EVENTS_OR_JSON = {200: {"description": "A Response object; with \"stream\": true, Server-Sent Events "
                                       "(`event:` and `data:` lines) ending with response.completed, "
                                       "response.incomplete or response.failed",
                        "content": {"text/event-stream": {"schema": {
                            "type": "object", "required": ["data"],
                            "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}}}}


def keeping_of(request: Request) -> ResponseKeeping:
    """The response store as this request's caller sees it."""
    return ResponseKeeping(getattr(request.app.state, "responses_store", None), caller_of(request))


@router.post("/v1/responses", responses={**EVENTS_OR_JSON, **refusals(404, 429, 503)})
@requires("inference")
async def create_response(body: ResponsesRequest, request: Request):
    turn = ResponseTurn(body, frontend_of(request), caller_of(request), keeping_of(request))
    generation = await unless_disconnected(request, turn.start())
    if body.stream:
        return sse_response(turn.events(generation), generation, done_marker=False)
    seqs = await collect_unless_disconnected(request, generation)
    return await turn.finish(seqs[0], generation)


@router.get("/v1/responses/{response_id}", responses=refusals(404, 503))
@requires("inference")
async def get_response(response_id: str, request: Request):
    return await keeping_of(request).read(response_id)


@router.delete("/v1/responses/{response_id}", responses=refusals(404, 503))
@requires("inference")
async def delete_response(response_id: str, request: Request):
    return await keeping_of(request).delete(response_id)
