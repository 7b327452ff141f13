"""The prompt in the answers: `echo` on `/v1/completions` and vLLM's `prompt_logprobs` lists.

`echo` (OpenAI's legacy semantics, as vLLM fills them): each choice's text starts with its
prompt's text (a text prompt as sent, token ids decoded), and with `logprobs: k` its logprobs
object covers the prompt's tokens, then the generated ones: the first prompt token has no
value (`null` in `token_logprobs` and `top_logprobs`); each other prompt token's
`top_logprobs` holds the token itself and the k most likely there. `max_tokens: 0` answers the
prompt alone. Streamed, the prompt comes in each choice's first chunk.

`prompt_logprobs` (vLLM's shape): `null` for the first prompt token, then per prompt token
`{token id: {"logprob", "rank", "decoded_token"}}` for the token itself and the top alternatives.
A logprob of -inf is written -9999.0, as vLLM and OpenAI write it.
"""
from __future__ import annotations

from typing import Callable

from bastion.server.prompt import TextPrompt
from bastion.transport.messages import TokenLogprob

LOWEST_LOGPROB = -9999.0

TokenText = Callable[[int], str]


def _finite(value: float) -> float:
    return max(value, LOWEST_LOGPROB)


def prompt_logprobs_json(entries: list[TokenLogprob | None], token_text: TokenText) -> list[dict | None]:
    """vLLM's `prompt_logprobs` list from the engine's entries (one per prompt token)."""
    out: list[dict | None] = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        ranked = {str(entry.token_id): {"logprob": _finite(entry.logprob), "rank": entry.rank,
                                        "decoded_token": token_text(entry.token_id)}}
        for rank, (token_id, value) in enumerate(entry.top, start=1):
            ranked.setdefault(str(token_id), {"logprob": _finite(value), "rank": rank,
                                              "decoded_token": token_text(token_id)})
        out.append(ranked)
    return out


class Echo:
    """What `echo` puts before the choices of one `/v1/completions` answer."""

    def __init__(self, body, answer, backend) -> None:
        """`body`: the parsed CompletionRequest; `answer`: its Generation or GenerationBatch;
        `backend`: the tokenizer's (a token's text, a token-id prompt's text)."""
        def decode(ids: list[int]) -> str:
            return backend.decode(ids, skip_special_tokens=False)
        self.n, self.answer, self.token_text = body.n, answer, lambda token_id: decode([token_id])
        self.top = body.logprobs  # None: no logprobs object
        self.prompt_only = body.max_tokens == 0
        self.texts = [p.text if isinstance(p, TextPrompt) else decode(p.ids) for p in body.to_prompts()]


    def text(self, index: int, generated: str) -> str:
        """Choice `index`'s text: its prompt's, then what was generated (nothing with max_tokens 0)."""
        return self.texts[index // self.n] + ("" if self.prompt_only else generated)

    def logprobs(self, index: int, generated: list[TokenLogprob], offset: int = 0) -> dict | None:
        """The legacy logprobs object of the prompt's tokens, then of `generated`, with text
        offsets from `offset`."""
        if self.top is None:
            return None
        generation = self.answer.generation_of(index)
        prompt = generation.prompt_logprobs or [None] * len(generation.prompt_ids)
        tokens, values, tops = [], [], []
        for token_id, entry in zip(generation.prompt_ids, prompt):
            tokens.append(self.token_text(token_id))
            values.append(None if entry is None else _finite(entry.logprob))
            tops.append(None if entry is None else {
                tokens[-1]: _finite(entry.logprob),
                **{self.token_text(t): _finite(v) for t, v in entry.top[:self.top]}})
        for lp in [] if self.prompt_only else generated:
            tokens.append(self.token_text(lp.token_id))
            values.append(lp.logprob)
            tops.append({self.token_text(t): v for t, v in lp.top})
        offsets = []
        for text in tokens:
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def returns_prompt_logprobs(body) -> bool:
    """Whether the answer carries vLLM's `prompt_logprobs` (not in a stream, as vLLM): asked for,
    or under `echo` with `logprobs` (vLLM's `prompt_logprobs` then defaults to `logprobs`)."""
    asked = body.prompt_logprobs is not None or (getattr(body, "echo", False) and body.logprobs is not None)
    return asked and not body.stream
