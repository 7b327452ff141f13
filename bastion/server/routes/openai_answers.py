"""The response objects of the OpenAI routes: whole envelopes and SSE chunks, choices, logprobs."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

from bastion.server.generation import Generation, GenerationBatch, SequenceDelta, SequenceState
from bastion.server.http.streaming import sse
from bastion.server.reasoning.chat import ChatReasoning
from bastion.server.scoring.echo import Echo, prompt_logprobs_json
from bastion.server.tools.shaping import ToolAnswer
from bastion.transport.messages import TokenLogprob


Answer = Generation | GenerationBatch
_OMIT = object()  # a chunk without a `usage` field


@dataclass(frozen=True)
class StreamUsage:
    """What `stream_options` asks of a stream's usage. `include`: a last chunk with the whole
    request's usage (choices empty), `usage: null` on the others, as OpenAI's. `continuous`
    (vLLM's `continuous_usage_stats`, only with `include`, as vLLM): every chunk, the role chunk
    too, carries the usage so far: prompt tokens, and completion tokens of every sequence of
    the request (vLLM counts the chunk's one choice; bastion's chunks may carry several)."""

    include: bool = False
    continuous: bool = False

    @classmethod
    def of(cls, options) -> "StreamUsage":
        """From a body's `stream_options` (None: no usage in the stream)."""
        if options is None or not options.include_usage:
            return cls()
        return cls(True, options.continuous_usage_stats)

    def running(self, answer: Answer):
        """The `usage` field of a chunk that is not the last."""
        if not self.include:
            return _OMIT
        if not self.continuous:
            return None
        prompt, completion = answer.prompt_tokens, answer.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}


class ResponseBuilder:
    """Builds the response objects of one request, streamed or whole."""

    def __init__(self, prefix: str, kind: str, model: str, logprobs: bool, backend,
                 tools: ToolAnswer | None = None, reasoning: ChatReasoning | None = None,
                 echo: Echo | None = None, scored: Answer | None = None) -> None:
        """`reasoning`: splits a chat answer's thinking off; `echo`: the prompt before each
        completion choice; `scored`: the answer whose prompt logprobs go into the response
        (vLLM's `prompt_logprobs`; server/scoring/echo.py)."""
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.kind, self.model, self.logprobs = kind, model, logprobs
        self.created = int(time.time())
        self.backend = backend  # the tokenizer's, for the text of logprob tokens
        self.tools = tools  # reads tool calls from a chat answer's text (None: no tools)
        self.reasoning = reasoning  # splits a chat answer's thinking off (None: not read)
        self.echo, self.scored = echo, scored

    def envelope(self, choices: list[dict], usage: dict) -> dict:
        """A whole (non-streamed) response (a chat's prompt logprobs at the top, as vLLM's)."""
        body = {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage}
        if self.scored is not None and self.kind == "chat.completion":
            body["prompt_logprobs"] = self.prompt_logprobs(0)
        return body

    def prompt_logprobs(self, index: int) -> list | None:
        entries = self.scored.generation_of(index).prompt_logprobs
        return None if entries is None else prompt_logprobs_json(entries, self._token)

    def chunk(self, choices: list[dict], usage=_OMIT) -> str:
        """One SSE event; `usage` as `StreamUsage` gives it (a dict, None, or no field)."""
        kind = "chat.completion.chunk" if self.kind == "chat.completion" else self.kind
        body = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices}
        if usage is not _OMIT:
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
        text, thinking = seq.text.text, {}
        if self.reasoning is not None:
            text, thinking = self.reasoning.message(text)
        message, finish = {"role": "assistant", "content": text}, seq.finish_reason
        if self.tools is not None:
            message, finish = self.tools.message(text, seq.finish_reason)
        if self.reasoning is not None:
            message = self.reasoning.whole(message, thinking)
        return {"index": seq.index, "message": message,
                "logprobs": self.chat_logprobs(seq.logprobs), "finish_reason": finish}

    def _chat_delta(self, d: SequenceDelta) -> dict | None:
        """One sequence's part of a chat chunk (None: nothing to send)."""
        text, thinking = d.text, {}
        if self.reasoning is not None:
            text, thinking = self.reasoning.delta(d.index, d.text, d.finish_reason is not None)
        delta, finish = ({"content": text} if text else {}), d.finish_reason
        if self.tools is not None:
            delta, finish = self.tools.delta(d.index, text, d.finish_reason)
        delta = {**thinking, **delta}
        if not (delta or finish or (self.logprobs and d.logprobs)):
            return None
        return {"index": d.index, "delta": delta, "logprobs": self.chat_logprobs(d.logprobs),
                "finish_reason": finish}

    def completion_choice(self, seq: SequenceState) -> dict:
        text, logprobs = seq.text.text, self.completion_logprobs(seq.logprobs)
        if self.echo is not None:
            text, logprobs = self.echo.text(seq.index, text), self.echo.logprobs(seq.index, seq.logprobs)
        choice = {"index": seq.index, "text": text, "logprobs": logprobs, "finish_reason": seq.finish_reason}
        if self.scored is not None:
            choice["prompt_logprobs"] = self.prompt_logprobs(seq.index)
        return choice

    async def chat_events(self, generation: Answer, usage: StreamUsage) -> AsyncIterator[str]:
        first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None} for i in range(len(generation.seqs))]
        yield self.chunk(first, usage.running(generation))
        async for deltas in generation.deltas():
            choices = [c for c in map(self._chat_delta, deltas) if c is not None]
            if choices:
                yield self.chunk(choices, usage.running(generation))
        if usage.include:
            yield self.chunk([], generation.usage())

    async def completion_events(self, generation: Answer, usage: StreamUsage) -> AsyncIterator[str]:
        offsets = [0] * len(generation.seqs)
        echoed: set[int] = set()  # the choices whose first chunk (with the prompt, under echo) is out
        async for deltas in generation.deltas():
            choices = []
            for d in deltas:
                first = self.echo is not None and d.index not in echoed
                if not (first or d.text or d.finish_reason or (self.logprobs and d.logprobs)):
                    continue
                echoed.add(d.index)
                choices.append(self._completion_delta(d, offsets[d.index], first))
                offsets[d.index] += len(choices[-1]["text"])
            if choices:
                yield self.chunk(choices, usage.running(generation))
        if usage.include:
            yield self.chunk([], generation.usage())

    def _completion_delta(self, d: SequenceDelta, offset: int, echo: bool = False) -> dict:
        text, logprobs = d.text, self.completion_logprobs(d.logprobs, offset)
        if echo:
            text, logprobs = self.echo.text(d.index, d.text), self.echo.logprobs(d.index, d.logprobs, offset)
        return {"index": d.index, "text": text, "logprobs": logprobs, "finish_reason": d.finish_reason}
