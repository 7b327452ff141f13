"""`StructuredOutputs`: the constraint a request's output must match, and its llguidance grammar.

The shape of vLLM's `StructuredOutputsParams` (exactly one of `json`, `regex`, `choice`, `grammar`,
`json_object`). It travels to the engine inside `SamplingParams`; the engine compiles
`grammar_text()` (the cache key) into a matcher per sequence, the API server checks the same text
before admitting the request. Every route's fields (OpenAI's `response_format`, vLLM's
`structured_outputs`, SGLang's `json_schema`/`regex`/`ebnf`, tool calls) become one of these.
"""
from __future__ import annotations

import json as _json
from dataclasses import dataclass

from llguidance import LLMatcher
from llguidance.gbnf_to_lark import any_to_lark

from bastion.structured.named_properties import only_named_properties

# NOTE: compact JSON: flexible whitespace lets small models emit whitespace forever (a known
# failure of constrained decoding); oneOf is read as anyOf (as xgrammar does), since exactly-one
# cannot be enforced token by token. A schema's own "x-guidance" options override these.
JSON_DEFAULTS = {"whitespace_flexible": False, "coerce_one_of": True}


class GrammarError(ValueError):
    """A constraint that cannot become a grammar; the message says why (for a 400)."""


@dataclass(frozen=True)
class StructuredOutputs:
    """What the output must match: exactly one of the fields is set.

    `json`: a JSON schema as JSON text; `regex`: a regular expression (Rust `regex` syntax);
    `choice`: the output is exactly one of these strings; `grammar`: a Lark grammar, or a
    GBNF/EBNF one (rules written `name ::= ...`, llama.cpp's and SGLang's `ebnf`);
    `json_object`: any JSON object.

    `disable_additional_properties` (vLLM's option of the same name): the JSON schema's objects
    get only the properties it names (`named_properties.py`) even where the server follows the
    JSON Schema letter (`--no-structured-output-strict-properties`); the server's default is that
    reading already.
    """

    json: str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False
    disable_additional_properties: bool = False

    def __post_init__(self) -> None:
        given = [name for name in ("json", "regex", "choice", "grammar") if getattr(self, name) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise GrammarError("give exactly one of json, regex, choice, grammar or json_object"
                               + (f" (got {', '.join(given)})" if given else ""))
        for name in ("json", "regex", "grammar"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise GrammarError(f"{name} must be a string")
        if not isinstance(self.disable_additional_properties, bool):
            raise GrammarError("disable_additional_properties must be a boolean")
        if self.choice is not None:
            if not self.choice or not all(isinstance(c, str) and c for c in self.choice):
                raise GrammarError("choice must be a non-empty list of non-empty strings")

    @property
    def kind(self) -> str:
        """Which field is set: "json", "regex", "choice", "grammar" or "json_object"."""
        for name in ("json", "regex", "choice", "grammar"):
            if getattr(self, name) is not None:
                return name
        return "json_object"

    @property
    def key(self) -> str:
        """The constraint as written, as one string: what the compile caches of the engine and
        the API server are keyed by (its grammar text is a function of it)."""
        value = getattr(self, self.kind)
        text = _json.dumps(value) if isinstance(value, list) else value if isinstance(value, str) else ""
        strict = "\0strict" if self.disable_additional_properties else ""
        return f"{self.kind}{strict}\0{text}"

    @property
    def size(self) -> int:
        """Bytes of the constraint as the client wrote it (what the size bound limits)."""
        value = getattr(self, self.kind)
        if isinstance(value, list):
            return sum(len(c.encode()) for c in value)
        return len(value.encode()) if isinstance(value, str) else 0

    def grammar_text(self, strict_properties: bool = True) -> str:
        """The llguidance grammar (a string); a GrammarError when the constraint is malformed
        before it reaches the compiler (a schema that is not a JSON object, a GBNF that does not
        parse). Whether the grammar compiles is the compiler's to say.

        `strict_properties` (`--structured-output-strict-properties`, the default): a JSON
        schema's objects get only the properties it names unless it allows others explicitly
        (`named_properties.py`); False follows the JSON Schema letter (unless this constraint
        sets `disable_additional_properties`)."""
        kind = self.kind
        if kind == "regex":
            return LLMatcher.grammar_from_regex(self.regex)
        if kind == "choice":
            return LLMatcher.grammar_from_lark("start: " + " | ".join(_json.dumps(c) for c in self.choice))
        if kind == "grammar":
            return LLMatcher.grammar_from_lark(_lark_of(self.grammar))
        schema = _schema_of(self)
        if self.json is not None and (strict_properties or self.disable_additional_properties):
            try:
                schema = only_named_properties(schema)
            except RecursionError:
                raise GrammarError("the JSON schema is nested too deeply to read") from None
        try:
            return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. "Value is not JSON serializable"
            raise GrammarError(f"the JSON schema cannot be compiled: {exc}") from None


def _schema_of(spec: StructuredOutputs) -> dict | bool:
    if spec.json_object:
        return {"type": "object"}
    try:
        schema = _json.loads(spec.json)
    except ValueError as exc:
        raise GrammarError(f"the JSON schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise GrammarError(f"a JSON schema must be a JSON object, got {type(schema).__name__}")
    return schema


def _lark_of(grammar: str) -> str:
    """Lark text for a Lark or GBNF grammar (GBNF rules are written `name ::= ...`)."""
    if "::=" not in grammar:
        return grammar
    try:
        return any_to_lark(grammar)
    except Exception as exc:  # the converter raises its own parse errors
        raise GrammarError(f"the GBNF grammar does not parse: {exc}") from None
