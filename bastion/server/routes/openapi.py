"""`GET /openapi.json`: the HTTP API as an OpenAPI 3.1 document, made once when the app is built.

FastAPI writes the paths and request bodies from the routes and their pydantic models; this
module then makes the document say what the server really does:

* the bounds `SamplingParams` checks (`sampling_params.BOUNDS`) on every body field that
  carries them, and the rules that span fields in words;
* the shape of each answer (`response_schemas.py`), and every refusal as the OpenAI error
  object (Anthropic's on `/v1/messages` and below) with the status it really has (400 for a
  bad body, never FastAPI's 422);
* each route's auth decision as a security requirement naming its scopes, when credentials are
  configured (an open server needs none, and says so);
* no developer docstrings, no addresses, no paths, no key names: nothing internal leaves.
"""
from __future__ import annotations

import json
from typing import Iterable, Mapping

from fastapi import APIRouter, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from bastion import __version__
from bastion.config.security import SecurityConfig
from bastion.sampling_params import BOUNDS
from bastion.security.auth import PUBLIC, decision_of, requires
from bastion.server.anthropic.request import MessagesRequest
from bastion.server.http.errors import ANTHROPIC_ERROR_SCHEMA, ERROR_SCHEMA, is_anthropic_path
from bastion.server.routes.fields.sampling import SAMPLING_FIELDS
from bastion.server.routes.protocol import ChatCompletionRequest, CompletionRequest, TokenizeRequest
from bastion.server.responses.request import ResponsesRequest
from bastion.server.routes.response_schemas import BY_ROUTE
from bastion.server.routes.sglang import RENAMED, GenerateRequest, SGLangSamplingParams

router = APIRouter()

# The bodies whose fields carry SamplingParams: SamplingParams name -> the body's field.
_SAMPLING_BODIES = {
    ChatCompletionRequest.__name__: {name: name for name in SAMPLING_FIELDS},
    CompletionRequest.__name__: {**{name: name for name in SAMPLING_FIELDS}, "logprobs": "logprobs"},
    SGLangSamplingParams.__name__: {name: RENAMED.get(name, name) for name in SAMPLING_FIELDS},
    MessagesRequest.__name__: {"top_p": "top_p", "top_k": "top_k"},  # its temperature is Anthropic's [0, 1]
    ResponsesRequest.__name__: {name: name for name in ("temperature", "top_p", "top_k", "logit_bias")},
}
# Bodies that take exactly one of two fields (null counts as absent): their `check()`.
_EXACTLY_ONE = {TokenizeRequest.__name__: ("prompt", "messages"),
                GenerateRequest.__name__: ("text", "input_ids")}

DESCRIPTION = (
    "An OpenAI-compatible (and SGLang-compatible) LLM server. Every refusal is an OpenAI error "
    "object: `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`, where `param` names "
    "the request field at fault. Request bodies refuse values outside the bounds shown; in "
    "addition, the prompt plus the completion length must fit the model's context "
    "(`max_model_len` in `GET /v1/models`), `min_tokens` must not exceed the completion length, "
    "token ids must be in the model's vocabulary, `model` must be a served model the caller may "
    "use (else 404 or 403), and fields that would change the answer but are not implemented "
    "(such as beam search, or tools outside chat) are refused with a 400 naming the field; "
    "other unknown top-level fields are ignored. An output constraint (`response_format`, "
    "`structured_outputs`, `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`; in "
    "`/generate`, `sampling_params.json_schema`, `regex`, `ebnf`; a named or `required` "
    "`tool_choice`) is compiled before the request is admitted: one per request, within the "
    "server's size and compile-time bounds, else a 400 with the code `invalid_structured_output` "
    "naming the field. Tools: their names must be unique, a named `tool_choice` must name one of "
    "`tools`, `required` or a named choice needs `tools`; only assistant messages carry "
    "`tool_calls`, whose `arguments` must be a JSON object written as a string. `max_tokens` may be "
    "0 only with `echo` (the prompt alone); `prompt_logprobs` above 0 cannot be streamed, and it "
    "(or `logprobs` with `echo`) asks at most the server's `--max-logprobs` (20 unless set) "
    "alternatives per prompt position. Integers are written as "
    "integers (`2`, not `2.0`), and no value is converted from another type. Anthropic's Messages "
    "API (`/v1/messages`, `/v1/messages/count_tokens`) refuses with Anthropic's error object, "
    "`{\"type\": \"error\", \"error\": {\"type\", \"message\"}}`, the message naming the field; its "
    "`max_tokens` is cut to the room the prompt leaves in the context rather than refused.")

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_ANTHROPIC_ERROR_REF = {"$ref": "#/components/schemas/AnthropicError"}
_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer",
                       "description": "An API key or a JWT: 'Authorization: Bearer <credential>'."},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                       "description": "An API key in the 'x-api-key' header."}}


@router.get("/openapi.json")
@requires("inference")
async def openapi_json(request: Request) -> Response:
    """The document `build_app` made; the same bytes for every request."""
    return Response(request.app.state.openapi, media_type="application/json")


def openapi_document(routes: Iterable, security: SecurityConfig) -> bytes:
    """The document for these routes, as served to every caller."""
    routes = [r for r in routes if isinstance(r, APIRoute)]
    spec = get_openapi(title="bastion", version=__version__, openapi_version="3.1.0",
                       description=DESCRIPTION, routes=routes)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for schema in schemas.values():
        schema.pop("description", None)  # a model's docstring is for developers
    for model, fields in _SAMPLING_BODIES.items():
        _bound(schemas[model]["properties"], fields)
    for model, fields in _EXACTLY_ONE.items():
        _exactly_one(schemas[model], fields)
    schemas["Error"] = ERROR_SCHEMA
    schemas["AnthropicError"] = ANTHROPIC_ERROR_SCHEMA
    secured = security.credentials_configured
    if secured:
        spec["components"]["securitySchemes"] = _SCHEMES
    decisions = {(r.path, m.lower()): decision_of(r.endpoint) for r in routes for m in r.methods}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            _describe(operation, decisions[path, method], secured,
                      _ANTHROPIC_ERROR_REF if is_anthropic_path(path) else _ERROR_REF)
            for status, schema in BY_ROUTE.get((path, method), {}).items():
                operation["responses"][status].setdefault("content", {})["application/json"] = \
                    {"schema": schema}
    return json.dumps(spec, sort_keys=True).encode()


def _bound(properties: dict, fields: Mapping[str, str]) -> None:
    """Add SamplingParams' bounds to the body fields that carry them (the non-null branch)."""
    for param, field in fields.items():
        if param not in BOUNDS or field not in properties:
            continue
        prop = properties[field]
        for branch in prop.get("anyOf", [prop]):
            if branch.get("type") == "null":
                continue
            bounds = BOUNDS[param]
            if "items" in bounds:
                branch.setdefault("items", {}).update(bounds["items"])
            else:
                branch.update(bounds)


def _exactly_one(schema: dict, fields: tuple[str, ...]) -> None:
    """One of `fields` given (not null), the others absent or null."""
    properties = schema["properties"]
    schema["oneOf"] = [{"required": [field], "properties": {field: _not_null(properties[field])}}
                       for field in fields]


def _not_null(prop: dict) -> dict:
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def _describe(operation: dict, decision, secured: bool, error_ref: dict = _ERROR_REF) -> None:
    """Public words, the auth requirement, and the route family's error object (`error_ref`)
    for every refusal."""
    answers = operation.setdefault("responses", {})
    answers.pop("422", None)  # NOTE: validation errors are 400s here (http/errors.py)
    if "requestBody" in operation:
        answers.setdefault("400", {"description": "The body is not valid (`param` names the field)"})
        answers.setdefault("413", {"description": "The body is larger than the server accepts"})
    if decision == PUBLIC:
        operation["description"] = "Open to anyone."
        operation["security"] = []
    else:
        wanted = " or ".join(f"'{scope}'" for scope in decision)
        operation["description"] = (f"Needs a credential with the {wanted} scope." if secured else
                                    f"Open: this server runs without credentials (with them, "
                                    f"it needs the {wanted} scope).")
        if secured:
            operation["security"] = [{name: list(decision)} for name in _SCHEMES]
            answers.setdefault("401", {"description": "No credential, or not a valid one"})
            answers.setdefault("403", {"description": "The credential lacks the scope (or the model)"})
    for status, answer in answers.items():
        if int(status) >= 400:
            answer["content"] = {"application/json": {"schema": error_ref}}
