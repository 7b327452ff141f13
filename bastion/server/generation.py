"""One request's journey through the API server: submit to a rank, follow the engine's token
deltas, turn them into text (stop strings included), count usage, and always end.

Every path ends the request: finished sequences, an error (which becomes an HTTP error or a
final SSE error event), or a cancel (client gone), which aborts it in the engine.

Several generations answered as one (`GenerationBatch`): the prompts of a batched
`/v1/completions` request. Each prompt is its own `Generation` (its own rank). The batch shows
the routes what one generation shows them: its sequences in prompt-major order (the choice of
prompt p's j-th sequence has index p * n + j, as the OpenAI API numbers them; each generation
was started with its `first_index`), their deltas interleaved as they come, usage summed, and one
`close` that ends every generation still running.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from bastion.sampling_params import SamplingParams
from bastion.server import metrics
from bastion.server.detokenizer import SequenceText
from bastion.server.engine_client import EngineClient, RankUnavailable
from bastion.server.http.errors import APIError
from bastion.transport.messages import FinishReason, RequestError, TokenDelta, TokenLogprob


@dataclass
class SequenceDelta:
    """What one sequence gained since the last delta, as the routes stream it.

    Not a copy of the engine's `TokenDelta`: it carries the text released after stop-string
    handling (held back while a stop string may still match), may merge several engine deltas,
    and its finish reason is "stop" when a stop string ended the sequence here.
    """

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: FinishReason | None = None

    def merge(self, later: "SequenceDelta") -> "SequenceDelta":
        return SequenceDelta(self.index, self.text + later.text, self.token_ids + later.token_ids,
                             self.logprobs + later.logprobs, later.finish_reason)


@dataclass
class SequenceState:
    """Everything one sequence has produced so far: its text (with stop strings), tokens, logprobs."""

    index: int
    text: SequenceText
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """An OpenAI `usage` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


class Generation:
    """Follows one submitted request; iterate `deltas()` or await `collect()` once."""

    def __init__(self, client: EngineClient, backend, prompt_ids: list[int], params: SamplingParams,
                 stops: list[str], cache_salt: str | None = None,
                 on_end: Callable[[int, int], None] | None = None, first_index: int = 0) -> None:
        """`first_index`: the choice index of its first sequence (a batch's prompts number their
        choices on, prompt-major); the engine numbers them from 0 all the same."""
        self.client, self.prompt_ids, self.params = client, prompt_ids, params
        self.cache_salt, self.on_end = cache_salt, on_end
        self.request_id = f"{client.client_index}-{uuid.uuid4().hex}"
        self.seqs = [SequenceState(first_index + i,
                                   SequenceText(backend, prompt_ids, stops, params.skip_special_tokens))
                     for i in range(params.n)]
        self.num_cached_tokens = 0
        self.prompt_logprobs: list[TokenLogprob | None] | None = None  # when asked: one per prompt token
        self.started = time.monotonic()
        self._last_token_at: float | None = None
        self._queue: asyncio.Queue | None = None
        self._ended = False

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)

    def usage(self) -> dict:
        return usage(self.prompt_tokens, self.completion_tokens, self.num_cached_tokens)

    def generation_of(self, index: int) -> "Generation":
        """The generation of choice `index` (itself; a batch has one per prompt)."""
        return self

    async def submit(self) -> None:
        """Send the request to a rank; a 503 when none is up."""
        try:
            rank, self._queue = await self.client.submit(self.request_id, self.prompt_ids,
                                                         self.params, self.cache_salt)
        except RankUnavailable as exc:
            self._end()
            raise APIError(503, str(exc)) from None
        metrics.RANK_REQUESTS.labels(str(rank)).inc()

    async def deltas(self) -> AsyncIterator[list[SequenceDelta]]:
        """Deltas for every sequence until all have finished."""
        assert self._queue is not None, "submit() first"
        try:
            while any(s.finish_reason is None for s in self.seqs):
                items = [await self._queue.get()]
                while not self._queue.empty():
                    items.append(self._queue.get_nowait())
                merged: dict[int, SequenceDelta] = {}
                for item in items:
                    delta = await self._apply(item)
                    if delta is not None:
                        merged[delta.index] = merged[delta.index].merge(delta) if delta.index in merged else delta
                if merged:
                    yield list(merged.values())
        finally:
            await self.close()

    async def close(self) -> None:
        """End the request (once): abort what is unfinished in the engine, settle its accounts."""
        if self._ended:
            return
        if self._queue is not None and any(s.finish_reason is None for s in self.seqs):
            await self.client.abort(self.request_id)
        self._end()

    async def collect(self) -> list[SequenceState]:
        async for _ in self.deltas():
            pass
        return self.seqs

    async def _apply(self, item) -> SequenceDelta | None:
        if isinstance(item, RankUnavailable):
            raise APIError(503, f"{item}; the request was not completed")
        if isinstance(item, RequestError):
            raise APIError(item.status, item.message)
        assert isinstance(item, TokenDelta)
        seq = self.seqs[item.index]
        if seq.finish_reason is not None:
            return None  # NOTE: the engine's abort echo after a stop string ended it here
        self._observe_tokens(len(item.new_token_ids))
        self.num_cached_tokens = max(self.num_cached_tokens, item.num_cached_tokens)
        if item.prompt_logprobs is not None:  # NOTE: the first sequence's first delta, before its siblings'
            self.prompt_logprobs = item.prompt_logprobs
        seq.token_ids += item.new_token_ids
        seq.logprobs += item.new_logprobs
        seq.text.add(item.new_token_ids)
        if seq.text.stopped_by is not None:
            seq.finish_reason = FinishReason.STOP
            await self.client.abort(self.request_id, [item.index])
        elif item.finish_reason is not None:
            seq.finish_reason = item.finish_reason
        text = seq.text.release(final=seq.finish_reason is not None)
        return SequenceDelta(seq.index, text, item.new_token_ids, item.new_logprobs, seq.finish_reason)

    def _observe_tokens(self, count: int) -> None:
        if not count:
            return
        now = time.monotonic()
        if self._last_token_at is None:
            metrics.TIME_TO_FIRST_TOKEN.observe(now - self.started)
        else:
            metrics.INTER_TOKEN_LATENCY.observe(now - self._last_token_at)
        self._last_token_at = now

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self.client.release(self.request_id)
        metrics.PROMPT_TOKENS.inc(self.prompt_tokens)
        metrics.GENERATION_TOKENS.inc(self.completion_tokens)
        metrics.E2E_LATENCY.observe(time.monotonic() - self.started)
        if self.on_end is not None:
            self.on_end(self.prompt_tokens, self.completion_tokens)


class GenerationBatch:
    """The generations of one batched request; iterate `deltas()` or await `collect()` once."""

    def __init__(self, generations: list[Generation]) -> None:
        self.generations = generations
        self.seqs: list[SequenceState] = [s for g in generations for s in g.seqs]

    @property
    def prompt_tokens(self) -> int:
        return sum(g.prompt_tokens for g in self.generations)

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.generations)

    def generation_of(self, index: int) -> Generation:
        """The generation (the prompt) of choice `index`."""
        return next(g for g in self.generations if any(s.index == index for s in g.seqs))

    def usage(self) -> dict:
        """Usage summed over the prompts (cached tokens too)."""
        return usage(self.prompt_tokens, self.completion_tokens,
                     sum(g.num_cached_tokens for g in self.generations))

    async def deltas(self) -> AsyncIterator[list[SequenceDelta]]:
        """Every generation's deltas as they arrive, those ready together in one list; the first
        error ends them all and is raised."""
        queue: asyncio.Queue = asyncio.Queue()

        async def follow(generation: Generation) -> None:
            try:
                async for deltas in generation.deltas():
                    queue.put_nowait(deltas)
                queue.put_nowait(None)
            except Exception as exc:  # NOTE: handed to the reader, which raises it
                queue.put_nowait(exc)

        tasks = [asyncio.ensure_future(follow(g)) for g in self.generations]
        try:
            running = len(tasks)
            while running:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                merged: dict[int, SequenceDelta] = {}
                for item in items:
                    if isinstance(item, Exception):
                        raise item
                    if item is None:
                        running -= 1
                        continue
                    for d in item:
                        merged[d.index] = merged[d.index].merge(d) if d.index in merged else d
                if merged:
                    yield list(merged.values())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()

    async def collect(self) -> list[SequenceState]:
        async for _ in self.deltas():
            pass
        return self.seqs

    async def close(self) -> None:
        """End every generation (each once): abort what is unfinished, settle each one's accounts."""
        for generation in self.generations:
            await generation.close()
