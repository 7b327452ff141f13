"""`POST /generate` in SGLang's shape: `text` or `input_ids`, `sampling_params`, `stream`.

A top-level `max_tokens` is accepted for the common curl one-liner. Streamed events carry the
text so far (SGLang's convention), then `data: [DONE]`.
"""
from __future__ import annotations

import time
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, Request
from pydantic import Field

from bastion.security.auth import requires
from bastion.server.frontend import ServerState
from bastion.server.generation import Generation, SequenceState
from bastion.server.http.errors import APIError
from bastion.server.http.streaming import collect_unless_disconnected, sse, sse_response
from bastion.server.routes.protocol import MAX_N, PositiveInt, StopField, _Body, _Fixed, build_sampling_params

router = APIRouter()

DEFAULT_MAX_NEW_TOKENS = 128


class SGLangSamplingParams(_Fixed):
    max_new_tokens: PositiveInt | None = None
    min_new_tokens: Annotated[int, Field(ge=0)] = 0
    temperature: Annotated[float, Field(ge=0)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: int = -1
    min_p: Annotated[float, Field(ge=0, le=1)] = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: StopField = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    sampling_seed: int | None = None


class GenerateRequest(_Body):
    text: str | None = None
    input_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None
    sampling_params: SGLangSamplingParams = Field(default_factory=SGLangSamplingParams)
    stream: bool = False
    max_tokens: PositiveInt | None = None
    model: str | None = None


@router.post("/generate")
@requires("inference")
async def generate(body: GenerateRequest, request: Request):
    state: ServerState = request.app.state.bastion
    state.check_model(body.model, request)
    if (body.text is None) == (body.input_ids is None):
        raise APIError(400, "give exactly one of 'text' or 'input_ids'", "text")
    prompt_ids = state.text_prompt(body.text) if body.text is not None else list(body.input_ids)
    state.check_ids(prompt_ids, "input_ids")
    sp = body.sampling_params
    requested = sp.max_new_tokens if sp.max_new_tokens is not None else body.max_tokens
    field = "sampling_params.max_new_tokens" if sp.max_new_tokens is not None else "max_tokens"
    budget = state.max_tokens(len(prompt_ids), requested, DEFAULT_MAX_NEW_TOKENS, field,
                              "text" if body.text is not None else "input_ids")
    stops = [sp.stop] if isinstance(sp.stop, str) else list(sp.stop or [])
    if any(s == "" for s in stops):
        raise APIError(400, "stop strings must not be empty", "sampling_params.stop")
    params = build_sampling_params(dict(
        n=sp.n, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k, min_p=sp.min_p,
        seed=sp.sampling_seed, presence_penalty=sp.presence_penalty,
        frequency_penalty=sp.frequency_penalty, repetition_penalty=sp.repetition_penalty,
        max_tokens=budget, min_tokens=sp.min_new_tokens, stop_token_ids=sp.stop_token_ids or [],
        ignore_eos=sp.ignore_eos, skip_special_tokens=sp.skip_special_tokens))
    generation = await state.start_generation(prompt_ids, params, stops, request)
    if body.stream:
        return sse_response(_events(generation), generation)
    seqs = await collect_unless_disconnected(request, generation)
    results = [_result(generation, s) for s in seqs]
    return results[0] if len(results) == 1 else results


def _result(generation: Generation, seq: SequenceState) -> dict:
    return {"index": seq.index, "text": seq.text.text[:seq.text.released], "output_ids": list(seq.token_ids),
            "meta_info": _meta(generation, seq)}


def _meta(generation: Generation, seq: SequenceState) -> dict:
    reason = None
    if seq.finish_reason == "length":
        reason = {"type": "length", "length": len(seq.token_ids)}
    elif seq.finish_reason is not None:
        matched = seq.text.stopped_by
        if matched is None and seq.finish_reason == "stop" and seq.token_ids:
            matched = seq.token_ids[-1]  # the stop token the engine ended on
        reason = {"type": seq.finish_reason, "matched": matched}
    return {"id": generation.request_id, "finish_reason": reason,
            "prompt_tokens": generation.prompt_tokens, "completion_tokens": len(seq.token_ids),
            "cached_tokens": generation.num_cached_tokens,
            "e2e_latency": round(time.monotonic() - generation.started, 6)}


async def _events(generation: Generation) -> AsyncIterator[str]:
    async for deltas in generation.deltas():
        for d in deltas:
            yield sse(_result(generation, generation.seqs[d.index]))
