"""Request bodies of the HTTP API (pydantic, strict types), and their sampling parameters.

A generation body hands the front end its prompt, completion budget, sampling parameters and
stop strings (`frontend.GenerationBody`). One builder, `build_sampling_params` (fields/sampling.py), makes the
engine's parameters from any body's fields; bounds that `SamplingParams` checks itself are
left to it (its 400 names the client's field), so only this server's own limits sit here.

Top-level fields we do not know are ignored (clients send vendor extensions), but fields that
would change the answer and that bastion does not implement (legacy `functions`, ...;
`fields/unsupported.py`) are refused with a 400 rather than silently dropped. Nested objects with a fixed
shape (`stream_options`, messages, SGLang's `sampling_params`, `response_format`, tools) refuse
unknown keys. Output constraints (`response_format`, `structured_outputs`, `guided_*`;
`fields/structured.py`; a forced tool call, `server/tools/`) become the `Constraint` a body's
`constraint` holds, and `SamplingParams.structured_outputs`.
"""
from __future__ import annotations

from functools import cached_property
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion.sampling_params import SamplingParams
from bastion.server.grammar_check import CODE
from bastion.server.http.errors import APIError
from bastion.server.prompt import Budget, ChatPrompt, TextPrompt, TokenPrompt
from bastion.server.routes.fields.structured import (GUIDED, Constraint, JsonSchema, ResponseFormat,
                                                     StructuredOutputsField, one_constraint,
                                                     openai_constraint)
from bastion.server.scoring.fields import prompt_scoring
from bastion.server.routes.fields.sampling import LogitBias, build_sampling_params, stop_strings
from bastion.server.routes.fields.unsupported import refuse_unsupported
from bastion.server.routes.fields.template_kwargs import ChatTemplateFields, TemplateKwargsField
from bastion.server.tools.constraint import tool_constraint
from bastion.server.tools.messages import AssistantToolCall, template_message
from bastion.server.tools.request import ToolChoice, ToolPlan, Tools, plan_tools, template_tools

MAX_N = 64
MAX_STOP_STRINGS = 16
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # as OpenAI's legacy completions API


class _Body(BaseModel):
    # NOTE: "allow" keeps unknown top-level fields visible to check(); they are unused.
    model_config = ConfigDict(strict=True, extra="allow")


class _Fixed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Fixed):
    include_usage: bool = False
    # vLLM's: usage on every chunk (with include_usage), as the streams of guidellm ask for.
    continuous_usage_stats: bool = False
    include_obfuscation: bool = True  # OpenAI's padding of deltas against side channels; ignored


# NOTE: completion lengths keep their bound: the budget is fitted to the context before
# SamplingParams sees it, and clients get pydantic's "greater than or equal to 1".
PositiveInt = Annotated[int, Field(ge=1)]
StopField = str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None

class _Sampling(_Body):
    sampling_path: ClassVar[str] = ""
    model: str
    n: Annotated[int, Field(le=MAX_N)] = 1
    temperature: Annotated[float, Field(le=2)] | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: Annotated[float, Field(le=10)] | None = None
    max_tokens: PositiveInt | None = None
    min_tokens: int = 0
    stop: StopField = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    best_of: int | None = None
    logit_bias: LogitBias | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsField | None = None
    guided_json: JsonSchema | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    prompt_logprobs: Annotated[int, Field(ge=0)] | None = None  # vLLM's (server/scoring/)

    def check(self) -> None:
        """A 400 for what this server does not implement, rather than a silently different answer."""
        refuse_unsupported(self.model_extra or {})
        if self.best_of is not None and self.best_of != self.n:
            raise APIError(400, "'best_of' is not supported (use 'n')", "best_of")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "'stream_options' is only allowed when 'stream' is true", "stream_options")

    @property
    def stop_strings(self) -> list[str]:
        return stop_strings(self.stop, "stop")

    def prompt_scoring(self) -> tuple[int, str] | None:
        return prompt_scoring(self)  # the prompt's logprobs asked, and the field asking

    @cached_property
    def constraint(self) -> Constraint | None:
        """The output constraint, with the field it came from; a 400 for two, or a bad one."""
        return openai_constraint(self.response_format, self.structured_outputs,
                                 {name: getattr(self, name) for name in GUIDED})


class TextPart(_Fixed):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self, field: str) -> dict:
        """The message as a chat template reads it (`field`: where it sits in the body)."""
        message = {"role": self.role, "content": self.text(), **({"name": self.name} if self.name else {})}
        return template_message(message, self.tool_calls, self.tool_call_id, field)


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    return [m.for_template(f"messages.{i}") for i, m in enumerate(messages)]


class ChatCompletionRequest(_Sampling, ChatTemplateFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    # NOTE: bounded here although SamplingParams checks `logprobs`: its 400 would name a field
    # the client did not send.
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def tool_plan(self) -> ToolPlan | None:
        """What the tool fields ask for (None: no tools); a 400 for a contradiction."""
        return plan_tools(self.tools, self.tool_choice, self.parallel_tool_calls)

    @cached_property
    def constraint(self) -> Constraint | None:
        """The output constraint: a forced tool call's, or the constraint fields' (not both)."""
        forced, fields = tool_constraint(self.tool_plan()), _Sampling.constraint.func(self)
        if forced is not None and fields is not None:
            raise APIError(400, f"'tool_choice' forces a tool call and '{fields.field}' constrains "
                                "the output: give only one", "tool_choice", CODE)
        return one_constraint([forced]) if forced is not None else fields

    def to_prompt(self) -> ChatPrompt:
        plan = self.tool_plan()
        return ChatPrompt(template_messages(self.messages), self.add_generation_prompt,
                          self.continue_final_message, tools=plan and plan.template_tools(),
                          template_kwargs=self.template_variables())

    def budget(self) -> Budget:
        if self.max_completion_tokens is not None:
            return Budget(self.max_completion_tokens, None, "max_completion_tokens")
        return Budget(self.max_tokens, None)

    def sampling(self, max_tokens: int) -> SamplingParams:
        return build_sampling_params(self, max_tokens, self.requested_logprobs(), constraint=self.constraint,
                                     scoring=self.prompt_scoring())

    def requested_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs' set to true", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_Sampling):
    # One prompt (text or token ids) or a batch of them, each its own generation.
    prompt: str | TokenIds | list[str] | list[TokenIds]
    echo: bool = False
    logprobs: int | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None  # 0 only with echo (server/scoring/)

    def to_prompts(self) -> list[TextPrompt | TokenPrompt]:
        """The body's prompts in order: one, or each of a batch; a 400 for an empty batch."""
        p = self.prompt
        batch = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        if not batch:
            raise APIError(400, "prompt must not be empty", "prompt")
        return [TextPrompt(x, "prompt") if isinstance(x, str) else TokenPrompt(list(x), "prompt")
                for x in batch]

    def to_prompt(self) -> TextPrompt | TokenPrompt:
        """The one prompt of the body; a 400 for a batch of several (`to_prompts` takes those)."""
        prompts = self.to_prompts()
        if len(prompts) != 1:
            raise APIError(400, "this route takes one prompt", "prompt")
        return prompts[0]

    def budget(self) -> Budget:
        return Budget(self.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS)

    def sampling(self, max_tokens: int) -> SamplingParams:
        return build_sampling_params(self, max_tokens, self.logprobs, constraint=self.constraint,
                                     scoring=self.prompt_scoring())


class TokenizeRequest(_Body, TemplateKwargsField):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    tools: Tools | None = None  # shown to the chat template, as in a chat request

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise APIError(400, "give exactly one of 'prompt' or 'messages'", "prompt")

    def to_prompt(self) -> ChatPrompt | TextPrompt:
        if self.messages is not None:
            return ChatPrompt(template_messages(self.messages), self.add_generation_prompt,
                              tools=template_tools(self.tools), template_kwargs=self.template_variables())
        return TextPrompt(self.prompt, "prompt", self.add_special_tokens)


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]
