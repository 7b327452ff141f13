"""A Responses body as bastion's chat path reads it: the front end's `GenerationBody`.

The conversation (the previous response's items, then this request's `input`) becomes chat
messages (conversation.py) with `instructions` first; function `tools` and `tool_choice` become
chat's `ToolPlan` (server/tools/); `text.format` becomes the same output constraint as chat's
`response_format`; `max_output_tokens`, `temperature`, `top_p` (and vLLM's `top_k`,
`logit_bias`, `skip_special_tokens`) the sampling parameters. Admission, limits, the context
budget and the constraint's compile are the front end's, as for every route.
"""
from __future__ import annotations

import json
from functools import cached_property
from types import SimpleNamespace

from pydantic import TypeAdapter

from bastion.sampling_params import SamplingParams
from bastion.server.grammar_check import CODE, Constraint
from bastion.server.http.errors import APIError
from bastion.server.prompt import Budget, ChatPrompt
from bastion.server.responses.conversation import chat_messages
from bastion.server.responses.request import InputItem, ResponsesRequest, TextFormatJsonSchema
from bastion.server.routes.fields.sampling import SAMPLING_FIELDS, build_sampling_params
from bastion.server.routes.fields.structured import one_constraint
from bastion.server.tools.constraint import tool_constraint
from bastion.server.tools.request import (FunctionDefinition, FunctionName, NamedToolChoice,
                                          ToolDefinition, ToolPlan, plan_tools)

_ITEMS = TypeAdapter(list[InputItem])
_SAMPLING = ("temperature", "top_p", "top_k", "logit_bias", "skip_special_tokens")


def input_items(body: ResponsesRequest) -> list[dict]:
    """The request's `input` as items (a string is one user message), as they are kept."""
    if isinstance(body.input, str):
        return [{"type": "message", "role": "user", "content": body.input}]
    return [item.model_dump(exclude_none=True, by_alias=True) for item in body.input]


class ResponsesChatBody:
    """The front end's view of one Responses request; `earlier` are the items the previous
    response kept (its conversation and its output), in order, before this request's input."""

    sampling_path = ""

    def __init__(self, body: ResponsesRequest, earlier: list[dict]) -> None:
        self.body, self.earlier = body, earlier

    @property
    def model(self) -> str:
        return self.body.model

    @property
    def stop_strings(self) -> list[str]:
        return []

    def check(self) -> None:
        self.body.check()

    @cached_property
    def tool_plan(self) -> ToolPlan | None:
        """Chat's plan of the function tools; a 400 naming the Responses field."""
        body = self.body
        tools = [ToolDefinition(type="function", function=FunctionDefinition(
            name=t.name, description=t.description, parameters=t.parameters, strict=t.strict))
            for t in body.tools or []]
        choice = body.tool_choice
        if choice is not None and not isinstance(choice, str):
            choice = NamedToolChoice(type="function", function=FunctionName(name=choice.name))
        try:
            return plan_tools(tools, choice, body.parallel_tool_calls)
        except APIError as exc:
            param = "tool_choice.name" if exc.param == "tool_choice.function.name" else exc.param
            raise APIError(exc.status, exc.message, param, exc.code) from None

    @cached_property
    def constraint(self) -> Constraint | None:
        """A forced tool call's constraint, or `text.format`'s (not both)."""
        forced, fmt = tool_constraint(self.tool_plan), self._format_constraint()
        if forced is not None and fmt is not None:
            raise APIError(400, f"'tool_choice' forces a tool call and '{fmt[0]}' constrains the "
                                "output: give only one", "tool_choice", CODE)
        found = forced or fmt
        return one_constraint([found]) if found is not None else None

    def _format_constraint(self) -> tuple[str, dict] | None:
        fmt = self.body.text.format if self.body.text is not None else None
        if isinstance(fmt, TextFormatJsonSchema):
            return "text.format.schema", {"json": json.dumps(fmt.schema_)}
        if fmt is not None and fmt.type == "json_object":
            return "text.format", {"json_object": True}
        return None

    def to_prompt(self) -> ChatPrompt:
        body, plan = self.body, self.tool_plan
        earlier = [(item, "previous_response_id") for item in _ITEMS.validate_python(self.earlier)]
        own = ([(item, f"input.{i}") for i, item in enumerate(body.input)] if not isinstance(body.input, str)
               else [(_ITEMS.validate_python(input_items(body))[0], "input")])
        return ChatPrompt(chat_messages(body.instructions, earlier + own), field="input",
                          tools=plan and plan.template_tools())

    def budget(self) -> Budget:
        return Budget(self.body.max_output_tokens, None, "max_output_tokens")

    def sampling(self, max_tokens: int) -> SamplingParams:
        fields = {name: getattr(self.body, name) if name in _SAMPLING else None for name in SAMPLING_FIELDS}
        return build_sampling_params(SimpleNamespace(**fields), max_tokens, None, constraint=self.constraint)
