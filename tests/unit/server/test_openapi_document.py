"""The OpenAPI document: SamplingParams' bounds as they are checked, the OpenAI error object for
every refusal, each route's auth decision, nothing internal, made once per app."""
from __future__ import annotations

import json
from types import SimpleNamespace

import jsonschema_rs
import pytest
import schemathesis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from bastion.config.security import SecurityConfig
from bastion.config.server import ServerConfig
from bastion.sampling_params import BOUNDS, INT64_MAX, INT64_MIN, SamplingParams
from bastion.security.auth import PUBLIC, Authenticator, decision_of
from bastion.server.app import build_app

KEY = "doc-key-0123456789abcdefgh"


def app_with(security: SecurityConfig = SecurityConfig()):
    state = SimpleNamespace(config=ServerConfig(served_model_names=("demo", "secret-model")))
    return build_app(state, Authenticator(security), security)


def keyed(tmp_path) -> SecurityConfig:
    keys = tmp_path / "keys.toml"
    keys.write_text(f"[keys.hidden-name]\nkey = '{KEY}'\nscopes = ['inference']\nmodels = ['demo']\n")
    return SecurityConfig(api_key_file=str(keys))


def accepted(**fields) -> bool:
    try:
        SamplingParams(max_tokens=None, **fields)
    except ValueError:
        return False
    return True


# (field, values the bound admits, values it refuses): each bound of BOUNDS, at its edges.
EDGES = [
    ("n", [1], [0]),
    ("temperature", [0.0, 1e9], [-1e-9]),
    ("top_p", [1e-9, 1.0], [0.0, 1.0 + 1e-9]),
    ("top_k", [-1, 1, INT64_MAX], [0, -2, INT64_MAX + 1]),
    ("min_p", [0.0, 1.0], [-1e-9, 1.0 + 1e-9]),
    ("presence_penalty", [-2.0, 2.0], [-2.001, 2.001]),
    ("frequency_penalty", [-2.0, 2.0], [-2.001, 2.001]),
    ("repetition_penalty", [1e-9], [0.0]),
    ("min_tokens", [0], [-1]),
    ("logprobs", [0, 20], [-1, 21]),
    ("seed", [INT64_MIN, INT64_MAX], [INT64_MIN - 1, INT64_MAX + 1]),
    ("stop_token_ids", [[0, INT64_MAX]], [[-1], [INT64_MAX + 1]]),
]


def test_every_bound_in_the_document_is_the_bound_sampling_params_checks():
    assert {name for name, _, _ in EDGES} == set(BOUNDS) - {"max_tokens"}
    for name, good, bad in EDGES:
        for value in good:
            assert accepted(**{name: value}), (name, value)
        for value in bad:
            assert not accepted(**{name: value}), (name, value)


def test_bodies_show_their_bounds_and_the_exactly_one_rules():
    doc = json.loads(app_with().state.openapi)
    schemas = doc["components"]["schemas"]
    chat, sglang = schemas["ChatCompletionRequest"]["properties"], schemas["SGLangSamplingParams"]["properties"]
    assert chat["n"] == {"type": "integer", "minimum": 1, "maximum": 64, "default": 1, "title": "N"}
    assert chat["top_p"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    assert chat["seed"]["anyOf"][0] == {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}
    assert sglang["sampling_seed"]["anyOf"][0]["maximum"] == INT64_MAX  # renamed, still bounded
    assert sglang["temperature"]["minimum"] == 0
    assert schemas["CompletionRequest"]["properties"]["logprobs"]["anyOf"][0]["maximum"] == 20
    assert chat["logprobs"] == {"type": "boolean", "default": False, "title": "Logprobs"}
    assert [alt["required"] for alt in schemas["GenerateRequest"]["oneOf"]] == [["text"], ["input_ids"]]
    assert [alt["required"] for alt in schemas["TokenizeRequest"]["oneOf"]] == [["prompt"], ["messages"]]


def test_refusals_are_openai_errors_and_an_open_server_asks_for_nothing():
    doc = json.loads(app_with().state.openapi)
    assert "securitySchemes" not in doc["components"] and "servers" not in doc
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert "422" not in op["responses"], path
            if "requestBody" in op:
                assert {"400", "413"} <= set(op["responses"]), path
            error = "AnthropicError" if path.startswith("/v1/messages") else "Error"  # each family's shape
            for status, answer in op["responses"].items():
                if int(status) >= 400 and (path, status) != ("/health", "503"):
                    assert answer["content"] == {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{error}"}}}, (path, status)
    assert {"/v1/messages", "/v1/messages/count_tokens"} <= set(doc["paths"])
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "404", "413", "429", "503"} == set(chat)
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    health = doc["paths"]["/health"]["get"]["responses"]  # a rank down is a health body, not an error
    assert health["503"]["content"] == health["200"]["content"]
    assert chat["200"]["content"]["application/json"]["schema"]["properties"]["object"] == {
        "const": "chat.completion"}
    # the document is a valid OpenAPI document, every operation usable
    assert all(result.ok() for result in schemathesis.openapi.from_dict(doc).get_all_operations())


def test_with_keys_every_route_lists_its_decision_and_nothing_internal_leaks(tmp_path):
    app = app_with(keyed(tmp_path))
    doc = json.loads(app.state.openapi)
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    routes = {(r.path, m.lower()): decision_of(r.endpoint) for r in app.router.routes
              if isinstance(r, APIRoute) for m in r.methods}
    assert {(p, m) for p, ops in doc["paths"].items() for m in ops} == set(routes)
    for (path, method), decision in routes.items():
        op = doc["paths"][path][method]
        if decision == PUBLIC:
            assert op["security"] == [] and "401" not in op["responses"], path
        else:
            assert op["security"] == [{"bearer": list(decision)}, {"apiKey": list(decision)}], path
            assert {"401", "403"} <= set(op["responses"]), path
    assert routes["/openapi.json", "get"] == ("inference",)
    text = app.state.openapi.decode()
    for internal in (KEY, "hidden-name", "secret-model", str(tmp_path), "keys.toml", "launcher", "127.0.0.1"):
        assert internal not in text, internal


def test_the_route_serves_the_bytes_made_at_start_up_and_needs_the_inference_scope(tmp_path):
    app = app_with(keyed(tmp_path))
    client = TestClient(app)
    assert client.get("/openapi.json").status_code == 401
    for _ in range(2):
        reply = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
        assert reply.status_code == 200 and reply.content == app.state.openapi
    assert reply.headers["content-type"] == "application/json"
    for path in ("/docs", "/redoc"):
        assert client.get(path, headers={"x-api-key": KEY}).status_code == 404
    open_client = TestClient(app_with())
    assert open_client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("field", ["prompt", "messages"])
def test_the_exactly_one_rule_matches_the_check(field):
    """Exactly one of prompt/messages, null counting as absent, as TokenizeRequest.check()."""
    doc = json.loads(app_with().state.openapi)
    # NOTE: the body's schema with the document's components beside it, for its $refs
    schema = {**doc["components"]["schemas"]["TokenizeRequest"], "components": doc["components"]}
    validator = jsonschema_rs.validator_for(schema)
    one = {"prompt": "hi"} if field == "prompt" else {"messages": [{"role": "user", "content": "hi"}]}
    assert validator.is_valid(one)
    assert validator.is_valid({**one, ("messages" if field == "prompt" else "prompt"): None})
    assert not validator.is_valid({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]})
    assert not validator.is_valid({})
