"""Output constraints in request bodies: every route's fields become one `StructuredOutputs` in
`SamplingParams` through the one builder, and each refusal names the client's field."""
from __future__ import annotations

import json

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from bastion.server.http.errors import APIError, validation_message
from bastion.server.routes.protocol import ChatCompletionRequest, CompletionRequest
from bastion.server.routes.sglang import GenerateRequest
from bastion.structured.spec import StructuredOutputs

MSG = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **fields})


def completion(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "a", **fields})


def generate(**sampling) -> GenerateRequest:
    return GenerateRequest.model_validate({"text": "a", "sampling_params": sampling})


@pytest.mark.parametrize("fields, spec, field", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA,
                                                                 "strict": True}}},
     StructuredOutputs(json=json.dumps(SCHEMA)), "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_object"}}, StructuredOutputs(json_object=True), "response_format"),
    ({"structured_outputs": {"json": SCHEMA}}, StructuredOutputs(json=json.dumps(SCHEMA)),
     "structured_outputs.json"),
    ({"structured_outputs": {"json": '{"type": "string"}'}}, StructuredOutputs(json='{"type": "string"}'),
     "structured_outputs.json"),
    ({"structured_outputs": {"json": SCHEMA, "disable_additional_properties": True}},
     StructuredOutputs(json=json.dumps(SCHEMA), disable_additional_properties=True), "structured_outputs.json"),
    ({"structured_outputs": {"regex": "[0-9]+", "disable_additional_properties": True}},
     StructuredOutputs(regex="[0-9]+"), "structured_outputs.regex"),
    ({"structured_outputs": {"regex": "[0-9]+", "disable_any_whitespace": True}},
     StructuredOutputs(regex="[0-9]+"), "structured_outputs.regex"),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, StructuredOutputs(choice=["yes", "no"]),
     "structured_outputs.choice"),
    ({"structured_outputs": {"grammar": 'start: "a"'}}, StructuredOutputs(grammar='start: "a"'),
     "structured_outputs.grammar"),
    ({"structured_outputs": {"json_object": True}}, StructuredOutputs(json_object=True),
     "structured_outputs.json_object"),
    ({"guided_json": SCHEMA}, StructuredOutputs(json=json.dumps(SCHEMA)), "guided_json"),
    ({"guided_regex": "a+"}, StructuredOutputs(regex="a+"), "guided_regex"),
    ({"guided_choice": ["x"]}, StructuredOutputs(choice=["x"]), "guided_choice"),
    ({"guided_grammar": 'root ::= "a"'}, StructuredOutputs(grammar='root ::= "a"'), "guided_grammar"),
])
def test_openai_fields_become_structured_outputs_on_chat_and_completions(fields, spec, field):
    for body in (chat(**fields), completion(**fields), chat(stream=True, **fields)):
        body.check()
        assert body.constraint == (spec, field)
        assert body.sampling(8).structured_outputs == spec


@pytest.mark.parametrize("sampling, spec, field", [
    ({"json_schema": json.dumps(SCHEMA)}, StructuredOutputs(json=json.dumps(SCHEMA)),
     "sampling_params.json_schema"),
    ({"regex": "a|b"}, StructuredOutputs(regex="a|b"), "sampling_params.regex"),
    ({"ebnf": 'root ::= "a"'}, StructuredOutputs(grammar='root ::= "a"'), "sampling_params.ebnf"),
])
def test_sglang_fields_become_structured_outputs(sampling, spec, field):
    body = generate(**sampling)
    assert body.constraint == (spec, field)
    assert body.sampling(8).structured_outputs == spec


def test_no_constraint_and_text_format_leave_sampling_unconstrained():
    for body in (chat(), completion(), generate(), chat(response_format={"type": "text"}),
                 chat(structured_outputs=None), chat(guided_json=None)):
        body.check()
        assert body.constraint is None and body.sampling(4).structured_outputs is None


@pytest.mark.parametrize("make, param", [
    (lambda: chat(response_format={"type": "json_object"}, structured_outputs={"regex": "a"}),
     "structured_outputs.regex"),
    (lambda: chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
                  guided_regex="a"), "guided_regex"),
    (lambda: completion(structured_outputs={"json": SCHEMA, "choice": ["a"]}), "structured_outputs.choice"),
    (lambda: completion(guided_json=SCHEMA, guided_choice=["a"]), "guided_choice"),
    (lambda: generate(json_schema="{}", regex="a"), "sampling_params.regex"),
    (lambda: generate(regex="a", ebnf='root ::= "a"'), "sampling_params.ebnf"),
])
def test_two_constraints_are_refused_naming_the_second(make, param):
    with pytest.raises(APIError) as caught:
        make().constraint
    assert caught.value.status == 400 and caught.value.param == param
    assert "both constrain the output" in caught.value.message


@pytest.mark.parametrize("make, param, text", [
    (lambda: chat(structured_outputs={}), "structured_outputs", "needs one of"),
    (lambda: chat(structured_outputs={"json_object": False}), "structured_outputs", "needs one of"),
    (lambda: chat(structured_outputs={"choice": []}), "structured_outputs.choice", "non-empty"),
    (lambda: chat(guided_choice=["a", ""]), "guided_choice", "non-empty"),
    (lambda: chat(structured_outputs={"regex": "a", "whitespace_pattern": " "}),
     "structured_outputs.whitespace_pattern", "not supported"),
    (lambda: chat(structured_outputs={"regex": "a", "structural_tag": "{}"}),
     "structured_outputs.structural_tag", "not supported"),
    (lambda: chat(response_format={"type": "json_schema"}), "response_format.json_schema", "needs it"),
    (lambda: chat(response_format={"type": "text", "json_schema": {"name": "x", "schema": {}}}),
     "response_format.json_schema", "goes with"),
    (lambda: chat(guided_regex="a\ud800"), "guided_regex", "not valid Unicode"),
])
def test_bad_constraints_are_refused_by_field(make, param, text):
    with pytest.raises(APIError) as caught:
        make().constraint
    assert caught.value.status == 400 and caught.value.param == param and text in caught.value.message
    assert caught.value.code == "invalid_structured_output"


@pytest.mark.parametrize("fields, param", [
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "extra": 1}}},
     "response_format.json_schema.extra"),
    ({"structured_outputs": {"regex": 5}}, "structured_outputs.regex"),
    ({"structured_outputs": {"json": 5}}, "structured_outputs.json"),
    ({"structured_outputs": {"backend": "xgrammar"}}, "structured_outputs.backend"),
    ({"guided_choice": "a"}, "guided_choice"),
])
def test_wrong_shapes_are_400s_naming_the_field(fields, param):
    with pytest.raises(ValidationError) as caught:
        chat(**fields)
    message, field = validation_message(RequestValidationError(
        [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]))
    assert field == param, message


def test_sglang_json_schema_is_text():
    with pytest.raises(ValidationError):
        generate(json_schema={"type": "object"})


def test_the_fields_are_in_the_openapi_document():
    from types import SimpleNamespace

    from bastion.config.security import SecurityConfig
    from bastion.config.server import ServerConfig
    from bastion.security.auth import Authenticator
    from bastion.server.app import build_app

    security = SecurityConfig()
    app = build_app(SimpleNamespace(config=ServerConfig(served_model_names=("demo",))),
                    Authenticator(security), security)
    schemas = json.loads(app.state.openapi)["components"]["schemas"]
    for body in ("ChatCompletionRequest", "CompletionRequest"):
        fields = schemas[body]["properties"]
        assert {"response_format", "structured_outputs", "guided_json", "guided_regex",
                "guided_choice", "guided_grammar"} <= set(fields)
    assert {"json_schema", "regex", "ebnf"} <= set(schemas["SGLangSamplingParams"]["properties"])
    assert schemas["JsonSchemaFormat"]["required"] == ["name", "schema"]
    assert {"json", "regex", "choice", "grammar", "json_object"} <= set(
        schemas["StructuredOutputsField"]["properties"])
    assert schemas["ResponseFormat"]["properties"]["type"]["enum"] == ["text", "json_object", "json_schema"]
    assert "invalid_structured_output" in json.loads(app.state.openapi)["info"]["description"]
