"""The body of `POST /v1/responses` (OpenAI's Responses API, as vLLM serves it), strict pydantic.

Input items are a tagged union on `type` (a message may leave it out): messages (roles user,
system, developer, assistant; content a string or `input_text`/`output_text` parts),
`function_call`, `function_call_output`, and `reasoning` (accepted so a client can send a
previous response's output back; not shown to the model). Any other item or part type (images,
files, hosted tools' calls) is a 400 saying it is not supported. The tags are written
`item[...]` so that a 400 names the field as the client wrote it (`input.2.call_id`).

Fields that would change the answer and are not implemented are refused in `check()`
(`background`, `include`, `top_logprobs`, `truncation: auto`, `max_tool_calls`, `prompt`,
`conversation`, `text.verbosity` other than medium, ...); the rest are accepted (`metadata`,
`user`, `service_tier`, `prompt_cache_key`, `safety_identifier`, `reasoning`, ...).
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from bastion.server.http.errors import APIError
from bastion.server.routes.fields.sampling import LogitBias
from bastion.server.routes.protocol import StreamOptions
from bastion.server.routes.fields.structured import JsonSchema
from bastion.server.routes.fields.unsupported import refuse_unsupported
from bastion.server.tools.request import MAX_TOOLS


class _Fixed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class _Item(BaseModel):
    """An item a client may send back as it got it: fields of OpenAI's we do not read are kept out
    of the way (`id`, `status`), unknown ones refused."""

    model_config = ConfigDict(strict=True, extra="forbid")
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


def _tagged(kinds: dict[str, Any], what: str, supported: str, default: str | None = None):
    """A union of `kinds` on their `type` (an object without one is the `default` kind; a string
    is the kind "string"), with a 400 that names the supported types for any other."""

    def kind(value: Any) -> str | None:
        if isinstance(value, str):
            found = "string"
        elif isinstance(value, dict):
            found = value.get("type", default)
        else:
            found = getattr(value, "type", None)
        return f"item[{found}]" if isinstance(found, str) and found in kinds else None

    members = tuple(Annotated[model, Tag(f"item[{name}]")] for name, model in kinds.items())
    return Annotated[Union[members], Discriminator(  # noqa: UP007 - a runtime tuple of members
        kind, custom_error_type="unsupported_item",
        custom_error_message=f"this {what} is not supported by this server ({supported})")]


class InputText(_Fixed):
    type: Literal["input_text"]
    text: str


class OutputText(_Fixed):
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] | None = None  # sent back as given; nothing to read
    logprobs: list[dict[str, Any]] | None = None


TextPart = _tagged({"input_text": InputText, "output_text": OutputText}, "content part type",
                   "text parts only: input_text, output_text")


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: list[TextPart] | str
    phase: str | None = None  # OpenAI's commentary/final_answer mark; not read

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionCallItem(_Item):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output"]
    call_id: str
    output: list[TextPart] | str

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


class ReasoningItem(BaseModel):
    """A reasoning item sent back from an earlier output: accepted, not shown to the model."""

    model_config = ConfigDict(strict=True, extra="allow")
    type: Literal["reasoning"]


InputItem = _tagged({"message": MessageItem, "function_call": FunctionCallItem,
                     "function_call_output": FunctionCallOutputItem, "reasoning": ReasoningItem},
                    "input item type", "message, function_call, function_call_output, reasoning",
                    default="message")


class FunctionTool(_Fixed):
    """A function tool, OpenAI's Responses shape (flat: no `function` wrapper)."""

    type: Literal["function"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _only_functions(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if isinstance(kind, str) and kind != "function":
            raise ValueError(f"'{kind}' tools are not supported by this server (function tools only)")
        return value


class FunctionChoice(_Fixed):
    type: Literal["function"]
    name: str


class TextFormatJsonSchema(_Fixed):
    type: Literal["json_schema"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
    schema_: JsonSchema = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None  # accepted either way: the output is always held to the schema


class TextFormatText(_Fixed):
    type: Literal["text"]


class TextFormatJsonObject(_Fixed):
    type: Literal["json_object"]


Format = _tagged({"json_schema": TextFormatJsonSchema, "json_object": TextFormatJsonObject,
                  "text": TextFormatText},
                 "text.format type", "json_schema, json_object, text")
ToolChoice = _tagged({"string": Literal["none", "auto", "required"], "function": FunctionChoice},
                     "tool_choice", "none, auto, required, or a function: {\"type\": \"function\", \"name\"}")


class TextConfig(_Fixed):
    format: Format | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(_Fixed):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                     Field(max_length=16)]
# Top-level fields of OpenAI's that would change the answer, with the values that do not.
_REFUSED_EXTRA = {"prompt": (), "conversation": (), "context_management": ([],)}


class ResponsesRequest(BaseModel):
    # NOTE: "allow" keeps unknown top-level fields visible to check(); they are unused.
    model_config = ConfigDict(strict=True, extra="allow")
    model: str
    input: list[InputItem] | str  # NOTE: the list first: a 400 then names the item at fault
    instructions: str | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(le=2)] | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM's
    logit_bias: LogitBias | None = None  # vLLM's
    skip_special_tokens: bool = True  # vLLM's
    metadata: Metadata | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    store: bool = True
    previous_response_id: str | None = None
    reasoning: ReasoningConfig | None = None
    service_tier: str | None = None
    background: bool | None = None
    include: list[str] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    max_tool_calls: int | None = None

    def check(self) -> None:
        """A 400 naming the field for what would change the answer and is not implemented."""
        refuse_unsupported(self.model_extra or {})
        _refuse(self.model_extra or {})
        for name, value, harmless in (("background", self.background, (False,)),
                                      ("include", self.include, ([],)),
                                      ("top_logprobs", self.top_logprobs, (0,)),
                                      ("truncation", self.truncation, ("disabled",)),
                                      ("max_tool_calls", self.max_tool_calls, ())):
            if value is not None and value not in harmless:
                raise APIError(400, f"'{name}' is not supported by this server", name)
        if self.text is not None and self.text.verbosity not in (None, "medium"):
            raise APIError(400, "'text.verbosity' is not supported by this server", "text.verbosity")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "'stream_options' is only allowed when 'stream' is true", "stream_options")
        self._check_unicode()

    def _check_unicode(self) -> None:
        """A 400 for text UTF-8 cannot carry (JSON lets a lone surrogate through): the answer
        echoes these fields and the store keeps them."""
        for name in type(self).model_fields:
            try:
                json.dumps(self.model_dump(include={name}, by_alias=True), ensure_ascii=False).encode()
            except UnicodeEncodeError:
                raise APIError(400, f"'{name}' is not valid Unicode: it holds a lone surrogate", name) from None


def _refuse(extra: dict) -> None:
    for name, harmless in _REFUSED_EXTRA.items():
        value = extra.get(name)
        if value is not None and value not in harmless:
            raise APIError(400, f"'{name}' is not supported by this server", name)
