"""`POST /v1/chat/completions` and `POST /v1/completions`, streamed (SSE) or not."""
from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Request

from bastion.security.auth import requires
from bastion.server.frontend import ServerState
from bastion.server.generation import Generation, SequenceDelta, SequenceState
from bastion.server.http.streaming import collect_unless_disconnected, sse, sse_response
from bastion.server.routes.protocol import ChatCompletionRequest, CompletionRequest
from bastion.transport.messages import TokenLogprob

router = APIRouter()

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # as OpenAI's legacy completions API


def _state(request: Request) -> ServerState:
    return request.app.state.bastion


@router.post("/v1/chat/completions")
@requires("inference")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = _state(request)
    state.check_model(body.model, request)
    body.refuse_unsupported()
    prompt = state.chat_prompt(body.messages, body.add_generation_prompt, body.continue_final_message)
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    budget = state.max_tokens(len(prompt), body.requested_max_tokens(), None, field, "messages")
    params = body.sampling_params(budget, body.requested_logprobs())
    generation = await state.start_generation(prompt, params, body.stop_strings, request)
    reply = _Reply("chatcmpl", "chat.completion", state.model_name, body.logprobs, state)
    if body.stream:
        return sse_response(reply.chat_events(generation, body.include_usage), generation)
    seqs = await collect_unless_disconnected(request, generation)
    return reply.envelope([reply.chat_choice(s) for s in seqs], generation.usage())


@router.post("/v1/completions")
@requires("inference")
async def completions(body: CompletionRequest, request: Request):
    state = _state(request)
    state.check_model(body.model, request)
    body.refuse_unsupported()
    prompt = body.single_prompt()
    prompt_ids = state.text_prompt(prompt) if isinstance(prompt, str) else list(prompt)
    state.check_ids(prompt_ids, "prompt")
    budget = state.max_tokens(len(prompt_ids), body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS)
    params = body.sampling_params(budget, body.logprobs)
    generation = await state.start_generation(prompt_ids, params, body.stop_strings, request)
    reply = _Reply("cmpl", "text_completion", state.model_name, body.logprobs is not None, state)
    if body.stream:
        return sse_response(reply.completion_events(generation, body.include_usage), generation)
    seqs = await collect_unless_disconnected(request, generation)
    return reply.envelope([reply.completion_choice(s) for s in seqs], generation.usage())


class _Reply:
    """Builds the response objects of one request, streamed or whole."""

    def __init__(self, prefix: str, kind: str, model: str, logprobs: bool, state: ServerState) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.kind, self.model, self.logprobs = kind, model, logprobs
        self.created = int(time.time())
        self.backend = state.backend

    def envelope(self, choices: list[dict], usage: dict) -> dict:
        """A whole (non-streamed) response."""
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage}

    def chunk(self, choices: list[dict], include_usage: bool, usage: dict | None = None) -> str:
        """One SSE event; with include_usage every chunk has `usage` (null but in the last)."""
        kind = "chat.completion.chunk" if self.kind == "chat.completion" else self.kind
        body = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices}
        if include_usage:
            body["usage"] = usage
        return sse(body)

    def _token(self, token_id: int) -> str:
        return self.backend.decode([token_id], skip_special_tokens=False)

    def chat_logprobs(self, logprobs: list[TokenLogprob]) -> dict | None:
        if not self.logprobs:
            return None
        def entry(token_id: int, logprob: float) -> dict:
            text = self._token(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
        return {"content": [{**entry(lp.token_id, lp.logprob),
                             "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in logprobs]}

    def completion_logprobs(self, logprobs: list[TokenLogprob], offset: int = 0) -> dict | None:
        if not self.logprobs:
            return None
        tokens = [self._token(lp.token_id) for lp in logprobs]
        offsets, position = [], offset
        for text in tokens:
            offsets.append(position)
            position += len(text)
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
                "top_logprobs": [{self._token(t): v for t, v in lp.top} for lp in logprobs],
                "text_offset": offsets}

    def chat_choice(self, seq: SequenceState) -> dict:
        return {"index": seq.index, "message": {"role": "assistant", "content": seq.text.text},
                "logprobs": self.chat_logprobs(seq.logprobs), "finish_reason": seq.finish_reason}

    def completion_choice(self, seq: SequenceState) -> dict:
        return {"index": seq.index, "text": seq.text.text,
                "logprobs": self.completion_logprobs(seq.logprobs), "finish_reason": seq.finish_reason}

    async def chat_events(self, generation: Generation, include_usage: bool) -> AsyncIterator[str]:
        first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None} for i in range(len(generation.seqs))]
        yield self.chunk(first, include_usage)
        async for deltas in generation.deltas():
            choices = [{"index": d.index, "delta": {"content": d.text} if d.text else {},
                        "logprobs": self.chat_logprobs(d.logprobs), "finish_reason": d.finish_reason}
                       for d in deltas if d.text or d.finish_reason or (self.logprobs and d.logprobs)]
            if choices:
                yield self.chunk(choices, include_usage)
        if include_usage:
            yield self.chunk([], True, generation.usage())

    async def completion_events(self, generation: Generation, include_usage: bool) -> AsyncIterator[str]:
        offsets = [0] * len(generation.seqs)
        async for deltas in generation.deltas():
            choices = []
            for d in deltas:
                if not (d.text or d.finish_reason or (self.logprobs and d.logprobs)):
                    continue
                choices.append(self._completion_delta(d, offsets[d.index]))
                offsets[d.index] += len(d.text)
            if choices:
                yield self.chunk(choices, include_usage)
        if include_usage:
            yield self.chunk([], True, generation.usage())

    def _completion_delta(self, d: SequenceDelta, offset: int) -> dict:
        return {"index": d.index, "text": d.text, "logprobs": self.completion_logprobs(d.logprobs, offset),
                "finish_reason": d.finish_reason}
