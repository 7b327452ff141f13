"""The fields that ask for the log-probabilities of given text, as vLLM reads them: `echo` with
`logprobs` (and `max_tokens: 0`) on `/v1/completions`, and `prompt_logprobs` on completions and
chat. They become the engine's `SamplingParams.prompt_logprobs` (engine/prompt_logprobs/):
how many top alternatives each prompt position reports, or None when nothing of the prompt is
scored. A 400 names the field for what vLLM refuses too.
"""
from __future__ import annotations

from bastion.server.http.errors import APIError

MAX_TOKENS_ZERO = "max_tokens must be at least 1 (0 only with 'echo': the prompt alone), got 0"


def streamed_prompt_logprobs(prompt_logprobs: int | None, stream: bool) -> int | None:
    """`prompt_logprobs` as the engine gets it: a stream has nowhere to carry them, so more
    than 0 with `stream` is refused (vLLM's rule) and 0 is dropped."""
    if prompt_logprobs is not None and stream:
        if prompt_logprobs > 0:
            raise APIError(400, "'prompt_logprobs' is not available when 'stream' is true", "prompt_logprobs")
        return None
    return prompt_logprobs


def completion_scoring(body) -> tuple[int, str] | None:
    """What a `/v1/completions` body asks of its prompt: the top alternatives per position and
    the field that asks most (None: nothing). `echo` with `logprobs: k` scores the prompt with
    k alternatives, as vLLM's `prompt_logprobs` defaults to `logprobs` under `echo`; `echo`
    with `max_tokens: 0` scores it even without logprobs (the engine generates nothing)."""
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, MAX_TOKENS_ZERO, "max_tokens")
    asked = [(k, field) for k, field in ((streamed_prompt_logprobs(body.prompt_logprobs, body.stream),
                                          "prompt_logprobs"),
                                         (body.logprobs if body.echo else None, "logprobs"))
             if k is not None]
    if not asked:
        return (0, "echo") if body.echo and body.max_tokens == 0 else None
    return max(asked)


def chat_scoring(body) -> tuple[int, str] | None:
    """What a chat body asks of its prompt (vLLM's `prompt_logprobs`), and the field."""
    k = streamed_prompt_logprobs(body.prompt_logprobs, body.stream)
    return None if k is None else (k, "prompt_logprobs")


def prompt_scoring(body) -> tuple[int, str] | None:
    """What a completions (`echo` declared) or chat body asks of its prompt, and the field."""
    return completion_scoring(body) if "echo" in type(body).model_fields else chat_scoring(body)


def check_scoring(body, max_logprobs: int) -> None:
    """A 400 naming the field that asks more alternatives per prompt position than
    `--max-logprobs` (bodies without `prompt_scoring` ask nothing)."""
    k, field = getattr(body, "prompt_scoring", lambda: None)() or (0, "")
    if k > max_logprobs:
        raise APIError(400, f"'{field}' asks for {k} log-probabilities per prompt position; at most "
                            f"{max_logprobs} are given (--max-logprobs)", field)
