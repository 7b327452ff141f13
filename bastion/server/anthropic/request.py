"""The request bodies of Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`)
as pydantic models, shaped as Anthropic documents them (strict types, as the other bodies).

Top-level fields bastion does not know are ignored, as on every route, except those that would
change the answer (`mcp_servers`, `container`: refused with a 400 naming them). Nested objects
have a fixed shape and refuse unknown keys. Blocks are told apart by `type`, and each role takes
only its own: a user message carries `text` and `tool_result` blocks, an assistant message
`text`, `tool_use`, `thinking` and `redacted_thinking` blocks (images and documents are refused:
no model bastion serves reads them). `cache_control` and `citations` are accepted anywhere
Anthropic takes them, and ignored (bastion's prefix cache needs no marks).

NOTE: the unions are plain (`anyOf` in the OpenAPI document), not pydantic's discriminated ones
(`oneOf` with a mapping, which schemathesis cannot always negate); a refusal still names the
member the client meant by its `type` or `role` (`http/errors.py: validation_message`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from bastion.server.routes.protocol import MAX_STOP_STRINGS
from bastion.server.routes.fields.unsupported import refuse_unsupported
from bastion.server.tools.request import MAX_TOOLS

# Top-level fields that would change the answer, with the values that leave it as bastion gives it.
REFUSED = {"mcp_servers": ([],), "container": ()}


class _Fixed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class CacheControl(_Fixed):
    type: Literal["ephemeral"]
    ttl: str | None = None


class TextBlock(_Fixed):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None  # echoed back by clients; not read


class ToolUseBlock(_Fixed):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Fixed):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool = False
    cache_control: CacheControl | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(block.text for block in self.content)


class ThinkingBlock(_Fixed):
    """An earlier turn's thinking, sent back by the client; not shown to the model again (as
    Anthropic drops earlier turns' thinking from the context)."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Fixed):
    type: Literal["redacted_thinking"]
    data: str


UserBlock = Union[TextBlock, ToolResultBlock]
AssistantBlock = Union[TextBlock, ToolUseBlock, ThinkingBlock, RedactedThinkingBlock]


class UserMessage(_Fixed):
    role: Literal["user"]
    content: str | list[UserBlock]


class AssistantMessage(_Fixed):
    role: Literal["assistant"]
    content: str | list[AssistantBlock]


Message = Union[UserMessage, AssistantMessage]


class Tool(_Fixed):
    """A client tool; `input_schema` is the JSON schema of its `input`."""

    # NOTE: Anthropic's rule for names is letters, digits, '_' and '-' up to 64; dots as OpenAI's.
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    strict: bool | None = None  # accepted; a forced call always matches the schema
    cache_control: CacheControl | None = None


class ToolChoiceAuto(_Fixed):
    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(_Fixed):
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(_Fixed):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(_Fixed):
    type: Literal["none"]


ToolChoice = Union[ToolChoiceAuto, ToolChoiceAny, ToolChoiceTool, ToolChoiceNone]


class ThinkingEnabled(_Fixed):
    type: Literal["enabled"]
    budget_tokens: Annotated[int, Field(ge=1)]
    display: Literal["summarized", "omitted"] | None = None


class ThinkingOff(_Fixed):
    type: Literal["disabled", "adaptive"]
    display: Literal["summarized", "omitted"] | None = None


# NOTE: accepted and not yet acted on: the reasoning parser adds thinking blocks (answer.py).
Thinking = Union[ThinkingEnabled, ThinkingOff]


class JsonOutputFormat(_Fixed):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Fixed):
    """`format`: a JSON schema the answer's text must match (structured outputs); `effort` is
    accepted and ignored, as `thinking` is."""

    format: JsonOutputFormat | None = None
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None


class Metadata(_Fixed):
    user_id: str | None = None


class _Body(BaseModel):
    # NOTE: "allow" keeps unknown top-level fields visible to check(); they are unused.
    model_config = ConfigDict(strict=True, extra="allow")


class CountTokensRequest(_Body):
    """`POST /v1/messages/count_tokens`: what a Messages request would show the model."""

    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None

    def check(self) -> None:
        """A 400 for a top-level field that would change the answer and is not implemented."""
        refuse_unsupported(self.model_extra or {}, REFUSED)


class MessagesRequest(CountTokensRequest):
    """`POST /v1/messages`. `max_tokens` is required, as Anthropic's; `temperature` is in [0, 1]."""

    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: Metadata | None = None
    stream: bool = False
    service_tier: str | None = None  # accepted and ignored, as OpenAI's on the chat route
