"""Request bodies of the HTTP API (pydantic, strict types), and their sampling parameters.

Top-level fields we do not know are ignored (clients send vendor extensions), but fields that
would change the answer and that bastion does not implement (tools, response formats, logit
bias, ...) are refused with a 400 rather than silently dropped. Nested objects with a fixed
shape (`stream_options`, messages, SGLang's `sampling_params`) refuse unknown keys.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion.sampling_params import SamplingParams
from bastion.server.http.errors import APIError

MAX_N = 64
MAX_STOP_STRINGS = 16


class _Body(BaseModel):
    # NOTE: "allow" keeps unknown top-level fields visible to refuse_unsupported(); they are unused.
    model_config = ConfigDict(strict=True, extra="allow")


class _Fixed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Fixed):
    include_usage: bool = False


PositiveInt = Annotated[int, Field(ge=1)]
StopField = str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None

# Fields whose presence (with a non-default value) changes what a client expects back.
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "suffix", "audio",
                "prediction", "guided_json", "guided_regex", "guided_choice", "guided_grammar")


class _Sampling(_Body):
    model: str
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: int | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    max_tokens: PositiveInt | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0
    stop: StopField = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    echo: bool = False

    def refuse_unsupported(self) -> None:
        extra = self.model_extra or {}
        for name in _UNSUPPORTED:
            if extra.get(name) not in (None, [], {}, "none", "auto"):
                raise APIError(400, f"'{name}' is not supported by this server", name)
        if self.best_of is not None and self.best_of != self.n:
            raise APIError(400, "'best_of' is not supported (use 'n')", "best_of")
        if self.logit_bias:
            raise APIError(400, "'logit_bias' is not supported by this server", "logit_bias")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise APIError(400, "only response_format {\"type\": \"text\"} is supported", "response_format")
        if self.echo:
            raise APIError(400, "'echo' is not supported by this server", "echo")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "'stream_options' is only allowed when 'stream' is true", "stream_options")

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if any(s == "" for s in stops):
            raise APIError(400, "stop strings must not be empty", "stop")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """Engine parameters; ValueError from their own checks becomes a 400."""
        values = dict(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                      min_p=self.min_p, seed=self.seed, presence_penalty=self.presence_penalty,
                      frequency_penalty=self.frequency_penalty,
                      repetition_penalty=self.repetition_penalty, max_tokens=max_tokens,
                      min_tokens=self.min_tokens, stop_token_ids=self.stop_token_ids or [],
                      ignore_eos=self.ignore_eos, logprobs=logprobs,
                      skip_special_tokens=self.skip_special_tokens)
        return build_sampling_params({k: v for k, v in values.items() if v is not None or k == "max_tokens"})


def build_sampling_params(values: dict) -> SamplingParams:
    try:
        return SamplingParams(**values)
    except ValueError as exc:
        param = str(exc).split(" ", 1)[0]
        raise APIError(400, str(exc), param if param in values else None) from None
    except TypeError as exc:
        raise APIError(400, f"invalid sampling parameters: {exc}") from None


class TextPart(_Fixed):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def requested_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs' set to true", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | list[str] | list[list[int]]
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def single_prompt(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise APIError(400, "batched prompts are not supported: send one prompt per request", "prompt")
            p = p[0]
        if isinstance(p, list) and not p:
            raise APIError(400, "prompt must not be empty", "prompt")
        return p


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]
