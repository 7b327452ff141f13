"""Constraints for the structured-output tests, each with the check that its output obeys it.

Every constraint is bounded (string lengths, enums, repetition counts), so a sequence that
follows it reaches the grammar's end well within `MAX_TOKENS` and finishes with "stop": a test
can then demand both the finish reason and the output's validity, whatever the model prefers.
The regular grammars (regex, Lark, GBNF) have a Python `re` twin that the output must fullmatch.
`chat` and `complete` ask through the openai SDK, streamed or not, for (text, finish_reason).
"""
from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import openai
from pydantic import BaseModel, Field

MAX_TOKENS = 160


class Person(BaseModel):
    """What the openai SDK's `.parse(response_format=Person)` turns into a strict JSON schema."""

    name: str = Field(min_length=1, max_length=12)
    age: int = Field(ge=0, le=120)
    language: Literal["python", "rust", "c"]


PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "language": {"enum": ["python", "rust", "c"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["name", "age", "language", "tags"],
    "additionalProperties": False,
}

# a date-like regex; its Python twin is itself
DATE_REGEX = r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
CHOICES = ["list", "tuple", "dict", "set"]

# "Name = value" assignments, one to three, in two grammar dialects
LARK_GRAMMAR = r"""
start: assign (";" assign){0,2}
assign: NAME " = " NUMBER
NAME: /[a-z]{1,6}/
NUMBER: /[0-9]{1,3}/
"""
GBNF_GRAMMAR = r"""
root ::= call ("," call)?
call ::= fn "(" arg ")"
fn ::= "len" | "abs" | "str"
arg ::= [a-z] [a-z]? [a-z]?
"""
LARK_PATTERN = r"[a-z]{1,6} = [0-9]{1,3}(;[a-z]{1,6} = [0-9]{1,3}){0,2}"
GBNF_PATTERN = r"(len|abs|str)\([a-z]{1,3}\)(,(len|abs|str)\([a-z]{1,3}\))?"


def check_json_schema(text: str, schema: dict) -> dict:
    """The output parsed; it must be JSON and valid under `schema` (jsonschema, Draft 2020-12)."""
    value = json.loads(text)
    jsonschema.Draft202012Validator(schema).validate(value)
    return value


def check_json_object(text: str) -> dict:
    value = json.loads(text)
    assert isinstance(value, dict), f"not a JSON object: {text!r}"
    return value


def check_fullmatch(text: str, pattern: str) -> str:
    assert re.fullmatch(pattern, text), f"{text!r} does not fullmatch {pattern!r}"
    return text


def check_choice(text: str, choices: list[str] = CHOICES) -> str:
    assert text in choices, f"{text!r} is not one of {choices}"
    return text


# The same constraints in vLLM's `structured_outputs` object: (body value, checker of the text)
VLLM_CASES = {
    "json": ({"json": PERSON_SCHEMA}, lambda t: check_json_schema(t, PERSON_SCHEMA)),
    "json_object": ({"json_object": True}, check_json_object),
    "regex": ({"regex": DATE_REGEX}, lambda t: check_fullmatch(t, DATE_REGEX)),
    "choice": ({"choice": CHOICES}, check_choice),
    "lark": ({"grammar": LARK_GRAMMAR}, lambda t: check_fullmatch(t, LARK_PATTERN)),
    "gbnf": ({"grammar": GBNF_GRAMMAR}, lambda t: check_fullmatch(t, GBNF_PATTERN)),
}
# SGLang's `sampling_params` fields: (field, value, checker)
SGLANG_CASES = {
    "json_schema": ("json_schema", json.dumps(PERSON_SCHEMA), lambda t: check_json_schema(t, PERSON_SCHEMA)),
    "regex": ("regex", DATE_REGEX, lambda t: check_fullmatch(t, DATE_REGEX)),
    "ebnf": ("ebnf", GBNF_GRAMMAR, lambda t: check_fullmatch(t, GBNF_PATTERN)),
}


def openai_client(server) -> openai.OpenAI:
    """The openai SDK on a ServerProcess: no retries (a failure shows), room for slow CPUs."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def parsed_person(client, model: str, messages: list[dict]) -> Person:
    """The openai SDK's `.parse(response_format=Person)`: a finished answer parsed into a Person."""
    completion = client.beta.chat.completions.parse(model=model, messages=messages, response_format=Person,
                                                    temperature=0, max_tokens=MAX_TOKENS)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop", message.content
    assert isinstance(message.parsed, Person), message.content
    assert message.parsed == Person.model_validate_json(message.content)
    return message.parsed


def chat(client, model: str, messages: list[dict], stream: bool = False, **kwargs) -> tuple[str, str]:
    """Greedy chat: (text, finish_reason) of the first choice, the deltas joined when streamed."""
    kwargs = {"model": model, "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS, **kwargs}
    if not stream:
        choice = client.chat.completions.create(**kwargs).choices[0]
        return choice.message.content, choice.finish_reason
    text, reason = [], None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            reason = choice.finish_reason or reason
    return "".join(text), reason


def complete(client, model: str, prompt: str, stream: bool = False, **kwargs) -> tuple[str, str]:
    """Greedy /v1/completions, as `chat`."""
    kwargs = {"model": model, "prompt": prompt, "temperature": 0, "max_tokens": MAX_TOKENS, **kwargs}
    if not stream:
        choice = client.completions.create(**kwargs).choices[0]
        return choice.text, choice.finish_reason
    text, reason = [], None
    for chunk in client.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            text.append(choice.text)
            reason = choice.finish_reason or reason
    return "".join(text), reason
