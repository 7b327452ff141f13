"""One request's prompt logprobs, collected over its prefill chunks and handed out once."""
from __future__ import annotations

from bastion.engine.outputs import TokenLogprob


class PromptLogprobs:
    """One request's prompt logprobs as its prefill chunks compute them: one entry per prompt
    token, None for the first (no position before it); `scored` counts the tokens done."""

    def __init__(self, num_prompt_tokens: int, top: int) -> None:
        self.num_prompt_tokens, self.top = num_prompt_tokens, top
        self.entries: list[TokenLogprob | None] = [None]
        self.scored = 1
        self.sent = False

    @property
    def complete(self) -> bool:
        """Every prompt token is scored (the prefix cache may serve this request again)."""
        return self.scored >= self.num_prompt_tokens

    def wanted(self, start: int, end: int) -> range:
        """The prompt tokens a chunk that computes positions [start, end) scores now (the
        logits of position p score token p + 1), leaving out those already scored."""
        first = max(self.scored, start + 1)
        return range(first, max(first, min(end + 1, self.num_prompt_tokens)))

    def add(self, first: int, entries: list[TokenLogprob]) -> None:
        assert first == self.scored, (first, self.scored)
        self.entries += entries
        self.scored += len(entries)

    def take(self) -> list[TokenLogprob | None] | None:
        """Every entry, the first time it is asked once all are in (then forgotten); else None."""
        if self.sent or not self.complete:
            return None
        self.sent = True
        entries, self.entries = self.entries, []
        return entries


def taken(collector: PromptLogprobs | None) -> list[TokenLogprob | None] | None:
    """A request's prompt logprobs for its next delta: all of them once, when complete."""
    return None if collector is None else collector.take()
