"""A forced tool call as a constraint: what `tool_choice` makes the output match.

* a named function: the output is that function's `parameters` (a JSON schema), so it always
  parses as the call's arguments;
* `"required"`: the output is a JSON array of `{"name": <one of the tools>, "parameters": <its
  schema>}` objects (an anyOf, one branch per tool), at least one, exactly one unless
  `parallel_tool_calls` (vLLM's shape).

Each tool's schema is written against its own root (`$defs`, `#/$defs/X`, a recursive `"#"`):
inside the array those pointers would name the array's root, so the `$defs` of every tool move
to the array schema's `$defs` under a per-tool prefix and its `$ref`s are rewritten to match (a
reference to the tool's own root becomes a reference to a definition holding it).

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
    defs: dict = {}
    calls = [{"type": "object",
              "properties": {"name": {"const": tool.function.name},
                             "parameters": _hoisted(parameters_schema(tool.function), f"tool{i}_", defs)},
              "required": ["name", "parameters"], "additionalProperties": False}
             for i, tool in enumerate(plan.tools)]
    schema = {"type": "array", "minItems": 1, "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    if not plan.parallel:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


_DEF_POINTERS = ("#/$defs/", "#/definitions/")


def _hoisted(schema: dict, prefix: str, defs: dict) -> dict:
    """`schema` for use below another root: its `$defs`/`definitions` go into `defs` as
    `prefix + name`, its `$ref`s are rewritten to them, and a reference to its own root points to
    `defs[prefix + "root"]`, which then holds it."""
    body = {key: value for key, value in schema.items() if key not in ("$defs", "definitions")}
    uses_root = [False]

    def pointer(ref: str) -> str:
        for start in _DEF_POINTERS:
            if ref.startswith(start):
                return "#/$defs/" + prefix + ref[len(start):]
        if ref == "#" or ref.startswith("#/"):
            uses_root[0] = True
            return "#/$defs/" + prefix + "root" + ref[1:]
        return ref  # NOTE: not a local pointer; the compiler reports it

    def rewrite(node):
        if isinstance(node, dict):
            return {key: pointer(value) if key == "$ref" and isinstance(value, str) else rewrite(value)
                    for key, value in node.items()}
        return [rewrite(item) for item in node] if isinstance(node, list) else node

    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            defs[prefix + name] = rewrite(sub)
    body = rewrite(body)
    if not uses_root[0]:
        return body
    defs[prefix + "root"] = body
    return {"$ref": "#/$defs/" + prefix + "root"}


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
