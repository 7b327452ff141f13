"""Several generations answered as one: the prompts of a batched `/v1/completions` request.

Each prompt is its own `Generation` (its own admission, limits ticket and rank). The batch shows
the routes what one generation shows them: its sequences in prompt-major order (the choice of
prompt p's j-th sequence has index p * n + j, as the OpenAI API numbers them; each generation
was started with its `first_index`), their deltas interleaved as they come, usage summed, and one
`close` that ends every generation still running.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

from bastion.server.generation import Generation, SequenceDelta, SequenceState, usage


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
