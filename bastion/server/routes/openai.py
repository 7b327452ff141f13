"""`POST /v1/chat/completions` and `POST /v1/completions`, streamed (SSE) or not."""
from __future__ import annotations

from fastapi import APIRouter, Request

from bastion.security.auth import requires
from bastion.server.http.middleware import caller_of
from bastion.server.http.errors import refusals
from bastion.server.http.streaming import (SSE_OR_JSON, collect_unless_disconnected, sse_response,
                                            unless_disconnected)
from bastion.server.routes import frontend_of
from bastion.server.reasoning.chat import ChatReasoning
from bastion.server.routes.openai_answers import ResponseBuilder, StreamUsage
from bastion.server.routes.protocol import ChatCompletionRequest, CompletionRequest
from bastion.server.scoring.echo import Echo, returns_prompt_logprobs
from bastion.server.tools.shaping import ToolAnswer

router = APIRouter()


@router.post("/v1/chat/completions", responses={**SSE_OR_JSON, **refusals(404, 429, 503)})
@requires("inference")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    frontend = frontend_of(request)
    generation = await unless_disconnected(request, frontend.generate(body, caller_of(request)))
    plan, reasoning = body.tool_plan(), frontend.reasoning
    responses = ResponseBuilder("chatcmpl", "chat.completion", frontend.model_name, body.logprobs,
                                frontend.backend,
                                plan and ToolAnswer(plan, frontend.tool_parsing, body.skip_special_tokens),
                                reasoning and ChatReasoning(reasoning, generation.prompt_ids, body.include_reasoning),
                                scored=generation if returns_prompt_logprobs(body) else None)
    if body.stream:
        return sse_response(responses.chat_events(generation, StreamUsage.of(body.stream_options)),
                            generation)
    seqs = await collect_unless_disconnected(request, generation)
    return responses.envelope([responses.chat_choice(s) for s in seqs], generation.usage())


@router.post("/v1/completions", responses={**SSE_OR_JSON, **refusals(404, 429, 503)})
@requires("inference")
async def completions(body: CompletionRequest, request: Request):
    frontend = frontend_of(request)
    generation = await unless_disconnected(request, frontend.generate_batch(body, caller_of(request)))
    responses = ResponseBuilder("cmpl", "text_completion", frontend.model_name,
                                body.logprobs is not None, frontend.backend,
                                echo=Echo(body, generation, frontend.backend) if body.echo else None,
                                scored=generation if returns_prompt_logprobs(body) else None)
    if body.stream:
        return sse_response(responses.completion_events(generation, StreamUsage.of(body.stream_options)),
                            generation)
    seqs = await collect_unless_disconnected(request, generation)
    return responses.envelope([responses.completion_choice(s) for s in seqs], generation.usage())
