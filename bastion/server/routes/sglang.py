"""`POST /generate` in SGLang's shape: `text` or `input_ids`, `sampling_params`, `stream`.

A top-level `max_tokens` is accepted for the common curl one-liner. `sampling_params` may
constrain the output with SGLang's `json_schema` (JSON text), `regex` or `ebnf`. Streamed events carry the
text so far (SGLang's convention), then `data: [DONE]`.
"""
from __future__ import annotations

import time
from functools import cached_property
from typing import Annotated, AsyncIterator, ClassVar

from fastapi import APIRouter, Request
from pydantic import Field

from bastion.sampling_params import SamplingParams
from bastion.security.auth import requires
from bastion.server.generation import Generation, SequenceState
from bastion.server.http.errors import APIError, refusals
from bastion.server.http.middleware import caller_of
from bastion.server.http.streaming import (SSE_OR_JSON, collect_unless_disconnected, sse, sse_response,
                                            unless_disconnected)
from bastion.server.prompt import Budget, TextPrompt, TokenPrompt
from bastion.server.routes import frontend_of
from bastion.server.routes.fields.sampling import LogitBias, build_sampling_params, stop_strings
from bastion.server.routes.protocol import MAX_N, PositiveInt, StopField, _Body, _Fixed
from bastion.server.routes.fields.structured import Constraint, sglang_constraint

router = APIRouter()

DEFAULT_MAX_NEW_TOKENS = 128
# SamplingParams names that SGLang spells otherwise.
RENAMED = {"seed": "sampling_seed", "min_tokens": "min_new_tokens"}


class SGLangSamplingParams(_Fixed):
    # NOTE: bounds that SamplingParams checks under the same name are left to it; the renamed
    # `min_new_tokens` keeps its own, as SamplingParams' message would name `min_tokens`.
    max_new_tokens: PositiveInt | None = None
    min_new_tokens: Annotated[int, Field(ge=0)] = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: StopField = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    n: Annotated[int, Field(le=MAX_N)] = 1
    sampling_seed: int | None = None
    logit_bias: LogitBias | None = None
    json_schema: str | None = None  # a JSON schema as JSON text
    regex: str | None = None
    ebnf: str | None = None  # a GBNF grammar (or Lark)


class GenerateRequest(_Body):
    sampling_path: ClassVar[str] = "sampling_params."
    text: str | None = None
    input_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None
    sampling_params: SGLangSamplingParams = Field(default_factory=SGLangSamplingParams)
    stream: bool = False
    max_tokens: PositiveInt | None = None
    model: str | None = None

    def check(self) -> None:
        if (self.text is None) == (self.input_ids is None):
            raise APIError(400, "give exactly one of 'text' or 'input_ids'", "text")

    def to_prompt(self) -> TextPrompt | TokenPrompt:
        if self.text is not None:
            return TextPrompt(self.text, "text")
        return TokenPrompt(list(self.input_ids), "input_ids")

    def budget(self) -> Budget:
        if self.sampling_params.max_new_tokens is not None:
            return Budget(self.sampling_params.max_new_tokens, DEFAULT_MAX_NEW_TOKENS,
                          "sampling_params.max_new_tokens")
        return Budget(self.max_tokens, DEFAULT_MAX_NEW_TOKENS)

    def sampling(self, max_tokens: int) -> SamplingParams:
        return build_sampling_params(self.sampling_params, max_tokens, renamed=RENAMED,
                                     path=self.sampling_path, constraint=self.constraint)

    @cached_property
    def constraint(self) -> Constraint | None:
        """The output constraint (`json_schema`, `regex` or `ebnf`), with its field."""
        p = self.sampling_params
        return sglang_constraint(p.json_schema, p.regex, p.ebnf, self.sampling_path)

    @property
    def stop_strings(self) -> list[str]:
        return stop_strings(self.sampling_params.stop, "sampling_params.stop")


@router.post("/generate", responses={**SSE_OR_JSON, **refusals(404, 429, 503)})
@requires("inference")
async def generate(body: GenerateRequest, request: Request):
    generation = await unless_disconnected(request, frontend_of(request).generate(body, caller_of(request)))
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
