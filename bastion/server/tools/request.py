"""The tool fields of a chat request (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`)
and what they ask for: a `ToolPlan`.

Shapes are strict pydantic models (a bad one is a 400 naming the field, e.g.
`tools.0.function.name`); what pydantic cannot see (duplicate names, a `tool_choice` naming a
function that is not in `tools`) is a 400 from `plan_tools`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion.server.http.errors import APIError

MAX_TOOLS = 128  # OpenAI's bound


class Fixed(BaseModel):
    """A nested object of a fixed shape: strict types, unknown keys refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


class FunctionDefinition(Fixed):
    # NOTE: OpenAI's rule for names (letters, digits, underscores, dashes; at most 64), dots too.
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: the function takes none
    strict: bool | None = None  # accepted; named and required calls always match the schema


class ToolDefinition(Fixed):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(Fixed):
    name: str


class NamedToolChoice(Fixed):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
Tools = Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)]


@dataclass(frozen=True)
class ToolPlan:
    """What a request asks of tools. `mode`: "none" (tools shown to the template, the answer is
    text), "auto" (the model decides; a parser reads its calls), "named" (one call to `name`,
    constrained) or "required" (at least one call, constrained; several if `parallel`)."""

    mode: str
    tools: tuple[ToolDefinition, ...]
    name: str | None = None
    parallel: bool = True

    def template_tools(self) -> list[dict]:
        return template_tools(self.tools)

    def function(self, name: str) -> FunctionDefinition:
        return next(tool.function for tool in self.tools if tool.function.name == name)


def template_tools(tools) -> list[dict] | None:
    """The tools as chat templates read them (OpenAI's objects, as vLLM passes them)."""
    return [tool.model_dump(exclude_none=True) for tool in tools] if tools else None


def plan_tools(tools: list[ToolDefinition] | None, choice: str | NamedToolChoice | None,
               parallel: bool | None) -> ToolPlan | None:
    """The plan of a request's tool fields; None when it has no tools (and asks for none)."""
    tools = tools or []
    names = [tool.function.name for tool in tools]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise APIError(400, f"two tools are named '{duplicate}': tool names must be unique", "tools")
    if choice is None:
        choice = "auto" if tools else "none"
    if not tools:
        if choice in ("none", "auto"):
            return None
        raise APIError(400, "'tool_choice' asks for a tool call, but 'tools' gives none", "tool_choice")
    parallel = True if parallel is None else parallel
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise APIError(400, f"tool_choice names the function '{choice.function.name}', which is "
                                f"not in 'tools' ({', '.join(names)})", "tool_choice.function.name")
        return ToolPlan("named", tuple(tools), choice.function.name, parallel)
    return ToolPlan(choice, tuple(tools), None, parallel)
