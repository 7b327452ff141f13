"""The request fields that constrain the output, each route's, as one `StructuredOutputs`.

* OpenAI: `response_format` `{"type": "text" | "json_object" | "json_schema", "json_schema":
  {"name", "schema", "strict", "description"}}`.
* vLLM: the `structured_outputs` object (`json` as an object or JSON text, `regex`, `choice`,
  `grammar`, `json_object`), and its older top-level `guided_json`, `guided_regex`,
  `guided_choice`, `guided_grammar`.
* SGLang's `/generate`: `sampling_params.json_schema` (JSON text), `regex`, `ebnf`.

A request gives at most one constraint; a second one is a 400 naming it. A `Constraint` keeps
the client's field, so every later refusal (size, compile, time; `server/grammar_check.py`)
names what the client wrote.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion.server.grammar_check import CODE, Constraint
from bastion.server.http.errors import APIError
from bastion.structured.spec import GrammarError, StructuredOutputs


class _Fixed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


JsonSchema = dict[str, Any]


class JsonSchemaFormat(_Fixed):
    """OpenAI's `response_format.json_schema`. `strict` is accepted either way: the output is
    always held to the schema."""

    name: str
    schema_: JsonSchema = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Fixed):
    """OpenAI's `response_format`; `json_schema` goes with `"type": "json_schema"` only."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constraints(self) -> list[tuple[str, dict]]:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise APIError(400, "'response_format.json_schema' goes with \"type\": \"json_schema\", "
                                "and that type needs it", "response_format.json_schema", CODE)
        if self.type == "json_object":
            return [("response_format", {"json_object": True})]
        if self.type == "json_schema":
            return [("response_format.json_schema.schema", {"json": _json_text(self.json_schema.schema_)})]
        return []


class StructuredOutputsField(_Fixed):
    """vLLM's `structured_outputs` (`StructuredOutputsParams`): exactly one of `json`, `regex`,
    `choice`, `grammar`, `json_object`. Of its options, `disable_any_whitespace` and
    `disable_fallback` are accepted either way (JSON is always compact here, and there is no
    fallback backend: a constraint that does not compile is refused); `disable_additional_properties`
    holds `json` to the properties it names even under `--no-structured-output-strict-properties`
    (the default reading already); those that would change the answer and are not implemented
    are refused when set."""

    json_: JsonSchema | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_fallback: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def constraints(self) -> list[tuple[str, dict]]:
        for name in ("whitespace_pattern", "structural_tag"):
            if getattr(self, name):
                raise APIError(400, f"'structured_outputs.{name}' is not supported by this server",
                               f"structured_outputs.{name}", CODE)
        found = [(f"structured_outputs.{name}", {name: value}) for name, value in
                 (("json", self.json_), ("regex", self.regex), ("choice", self.choice),
                  ("grammar", self.grammar)) if value is not None]
        if self.json_object:
            found.append(("structured_outputs.json_object", {"json_object": True}))
        if not found:
            raise APIError(400, "'structured_outputs' needs one of json, regex, choice, grammar or "
                                "json_object", "structured_outputs", CODE)
        strict = {"disable_additional_properties": True} if self.disable_additional_properties else {}
        return [(field, {"json": _json_text(kw["json"]), **strict} if "json" in kw else kw) for field, kw in found]


def openai_constraint(response_format: ResponseFormat | None,
                      structured_outputs: StructuredOutputsField | None,
                      guided: dict[str, Any]) -> Constraint | None:
    """The constraint of a chat or completions body: `response_format`, `structured_outputs`,
    then vLLM's `guided_*` fields (`guided` maps their names to the body's values)."""
    found = response_format.constraints() if response_format is not None else []
    found += structured_outputs.constraints() if structured_outputs is not None else []
    for name, kind in GUIDED.items():
        value = guided.get(name)
        if value is not None:
            found.append((name, {kind: _json_text(value) if kind == "json" else value}))
    return one_constraint(found)


def sglang_constraint(json_schema: str | None, regex: str | None, ebnf: str | None,
                      path: str) -> Constraint | None:
    """The constraint of SGLang's `sampling_params` (`path` is where they sit in the body)."""
    found = [(path + name, {kind: value}) for name, kind, value in
             (("json_schema", "json", json_schema), ("regex", "regex", regex), ("ebnf", "grammar", ebnf))
             if value is not None]
    return one_constraint(found)


# vLLM's older top-level fields: name -> the StructuredOutputs field.
GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
          "guided_grammar": "grammar"}


def one_constraint(found: list[tuple[str, dict]]) -> Constraint | None:
    """The one constraint of `found` ((field, StructuredOutputs kwargs) in the body's order);
    a 400 naming the second field when there are more."""
    if not found:
        return None
    if len(found) > 1:
        raise APIError(400, f"'{found[1][0]}' and '{found[0][0]}' both constrain the output: give "
                            "only one", found[1][0], CODE)
    field, kwargs = found[0]
    try:
        spec = StructuredOutputs(**kwargs)
        spec.size  # noqa: B018 - text that UTF-8 cannot carry (a lone surrogate) fails here
    except GrammarError as exc:
        raise APIError(400, f"invalid '{field}': {exc}", field, CODE) from None
    except UnicodeEncodeError:
        raise APIError(400, f"'{field}' is not valid Unicode (a lone surrogate)", field, CODE) from None
    return Constraint(spec, field)


def _json_text(schema: JsonSchema | str) -> str:
    """A schema given as an object becomes JSON text; text stays as the client wrote it."""
    return schema if isinstance(schema, str) else json.dumps(schema)
