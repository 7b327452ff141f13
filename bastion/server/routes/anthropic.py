"""`POST /v1/messages` (streamed or not) and `POST /v1/messages/count_tokens`: Anthropic's
Messages API, served on the chat route's path (`server/anthropic/`). Their errors are in
Anthropic's shape (`http/errors.py: error_body_for`), the auth guard's and admission's too."""
from __future__ import annotations

from typing import Awaitable, TypeVar

from fastapi import APIRouter, Request

from bastion.security.auth import requires
from bastion.server.anthropic.answer import MessageAnswer, error_event
from bastion.server.anthropic.request import CountTokensRequest, MessagesRequest
from bastion.server.anthropic.to_chat import anthropic_error, to_chat
from bastion.server.http.errors import APIError, refusals
from bastion.server.http.middleware import caller_of
from bastion.server.http.streaming import collect_unless_disconnected, sse_response, unless_disconnected
from bastion.server.routes import frontend_of
from bastion.server.tools.shaping import ToolAnswer

router = APIRouter()
T = TypeVar("T")

# The OpenAPI document's 200: a message, or with "stream": true Anthropic's named events.
EVENTS_OR_JSON = {200: {"description": "A message object; with \"stream\": true, Server-Sent Events, "
                                       "each with an 'event:' line (message_start ... message_stop)",
                        "content": {"text/event-stream": {"schema": {
                            "type": "object", "required": ["event", "data"],
                            "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}}}}}


async def _in_body_terms(work: Awaitable[T]) -> T:
    """`work`, its refusals naming the Messages body's fields."""
    try:
        return await work
    except APIError as exc:
        raise anthropic_error(exc) from None


@router.post("/v1/messages", responses={**EVENTS_OR_JSON, **refusals(404, 429, 503)})
@requires("inference")
async def messages(body: MessagesRequest, request: Request):
    frontend = frontend_of(request)
    chat = to_chat(body)
    generation = await unless_disconnected(
        request, _in_body_terms(frontend.generate(chat, caller_of(request))))
    plan = chat.tool_plan()
    reasoning = frontend.reasoning
    answer = MessageAnswer(body.model, lambda: plan and ToolAnswer(plan, frontend.tool_parsing),
                           lambda: reasoning and reasoning.splitter(generation.prompt_ids))
    if body.stream:
        return sse_response(answer.events(generation), generation, done_marker=False,
                            error_event=error_event)
    seqs = await collect_unless_disconnected(request, generation)
    return answer.message(seqs[0], generation)


@router.post("/v1/messages/count_tokens", responses=refusals(404))
@requires("inference")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict:
    chat = to_chat(body)
    tokens = await _in_body_terms(_tokenize(request, chat))
    return {"input_tokens": len(tokens)}


async def _tokenize(request: Request, chat) -> list[int]:
    return frontend_of(request).tokenize(chat, caller_of(request))
