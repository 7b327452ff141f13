"""A forced tool call as a constraint: what `tool_choice` makes the output match.

* a named function: the output is that function's `parameters` (a JSON schema), so it always
  parses as the call's arguments;
* `"required"`: the output is a JSON array of `{"name": <one of the tools>, "parameters": <its
  schema>}` objects (an anyOf, one branch per tool), at least one, exactly one unless
  `parallel_tool_calls` (vLLM's shape).

`auto` and `none` constrain nothing. Each constraint comes with the body field it is made
from, for the 400 of a schema that does not compile: the named function's
`tools.<i>.function.parameters`, or `tools` for the array of them all.
"""
from __future__ import annotations

import json

from bastion.server.tools.request import FunctionDefinition, ToolPlan

# A function without `parameters` takes none: its arguments are `{}`.
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def parameters_schema(function: FunctionDefinition) -> dict:
    return NO_PARAMETERS if function.parameters is None else function.parameters


def call_array_schema(plan: ToolPlan) -> dict:
    """The schema of `required`'s output: an array of calls, each naming one of the tools."""
    calls = [{"type": "object",
              "properties": {"name": {"const": tool.function.name},
                             "parameters": parameters_schema(tool.function)},
              "required": ["name", "parameters"], "additionalProperties": False}
             for tool in plan.tools]
    schema = {"type": "array", "minItems": 1, "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    if not plan.parallel:
        schema["maxItems"] = 1
    return schema


def tool_constraint(plan: ToolPlan | None) -> tuple[str, dict] | None:
    """The constraint of a plan as (the field it comes from, `StructuredOutputs` arguments): a
    JSON schema for named and required calls, else None."""
    if plan is None or plan.mode in ("none", "auto"):
        return None
    if plan.mode == "required":
        return "tools", {"json": json.dumps(call_array_schema(plan))}
    index = next(i for i, tool in enumerate(plan.tools) if tool.function.name == plan.name)
    schema = parameters_schema(plan.tools[index].function)
    return f"tools.{index}.function.parameters", {"json": json.dumps(schema)}
