"""Errors: one exception type, handlers that never leak a trace, and the body shape of each
route family, chosen here and nowhere else (`error_body_for`): Anthropic's on `/v1/messages`
and below, OpenAI's everywhere else."""
from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error a client gets as `{"error": {...}}` with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)

    def body_for(self, path: str) -> dict:
        """The body in the shape of the route family `path` belongs to."""
        return error_body_for(path, self.status, self.message, self.param, self.code)


# The OpenAPI schema of `error_body` (the document at /openapi.json refers to it for every refusal).
ERROR_SCHEMA = {
    "title": "Error", "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "integer"]}}}},
}


def refusals(*statuses: int) -> dict:
    """A route's `responses=` for the OpenAPI document: the refusals it makes beyond those every
    route has (auth, a bad or too large body), each an `error_body`."""
    return {status: {"description": HTTPStatus(status).phrase} for status in statuses}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": _utf8(message), "type": kind, "param": _utf8(param),
                      "code": code or status}}


# Anthropic's error types by status (its API answers 529 where bastion answers 503, as vLLM's
# Messages route does: the status is the server's, the type is Anthropic's word for it).
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                    429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
                    529: "overloaded_error"}
# The OpenAPI schema of `anthropic_error_body`.
ANTHROPIC_ERROR_SCHEMA = {
    "title": "AnthropicError", "type": "object", "required": ["type", "error"],
    "properties": {"type": {"const": "error"}, "error": {
        "type": "object", "required": ["type", "message"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}},
}


def is_anthropic_path(path: str) -> bool:
    """Whether `path` is in Anthropic's route family (`/v1/messages` and below)."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def anthropic_error_body(status: int, message: str, param: str | None = None) -> dict:
    """Anthropic's error object; its shape has no `param`, so the message names the field."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if param and param not in message:
        message = f"{param}: {message}"
    return {"type": "error", "error": {"type": kind, "message": _utf8(message)}}


def error_body_for(path: str, status: int, message: str, param: str | None = None,
                   code: str | None = None) -> dict:
    """The error body of the route family `path` belongs to (the one place that decides)."""
    if is_anthropic_path(path):
        return anthropic_error_body(status, message, param)
    return error_body(status, message, param, code)


def _utf8(text: str | None) -> str | None:
    """`text` as UTF-8 can carry it: a message that quotes the client (a model name, a field)
    may hold a lone surrogate, which JSON lets in and no UTF-8 body can send; it becomes '?'."""
    return text if text is None else text.encode("utf-8", "replace").decode("utf-8")


def error_response(error: APIError, path: str = "") -> JSONResponse:
    """`error` as the route family of `path` answers it."""
    return JSONResponse(error.body_for(path), status_code=error.status, headers=error.headers)


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}
_TAG_FIELDS = ("type", "role")  # the fields that tell a union's models apart (Anthropic's blocks)


def _is_model_tag(part) -> bool:
    """A union member that is a model is reported under its class name (`UserMessage`)."""
    return isinstance(part, str) and part[:1].isupper() and part.isidentifier()


def _is_union_tag(part) -> bool:
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part.startswith("function-")
                                      or _is_model_tag(part))


def _tag_mismatch(error: dict) -> bool:
    """A union's model member whose tag field (`type`, `role`) is not the value sent."""
    loc = tuple(error.get("loc", ()))
    return error.get("type") == "literal_error" and len(loc) >= 2 and loc[-1] in _TAG_FIELDS \
        and _is_model_tag(loc[-2])


def _meant(errors: list[dict]) -> tuple[dict, str | None]:
    """The error of the union member the client meant: the deepest outside the members whose
    tag did not match; or, when a tag mismatch lies deeper (no member has the tag sent), the
    tags that field takes."""
    mismatches = [e for e in errors if _tag_mismatch(e)]
    wrong = {tuple(e["loc"])[:-1] for e in mismatches}

    def under(e: dict, member: tuple) -> bool:
        return tuple(e.get("loc", ()))[:len(member)] == member
    others = [e for e in errors if not any(under(e, w) for w in wrong)]
    # NOTE: the tags a field takes are those of members inside no member already ruled out
    mismatches = [e for e in mismatches if not any(under(e, w) and len(w) < len(e["loc"]) - 1 for w in wrong)]
    depth = lambda e: len(e.get("loc", ()))  # noqa: E731
    best = max(others, key=depth, default=None)
    deepest_tag = max(mismatches, key=depth, default=None)
    if best is not None and (deepest_tag is None or depth(best) >= depth(deepest_tag)):
        return best, None
    tag_loc = [p for p in deepest_tag["loc"] if not _is_union_tag(p)]
    expected = [e.get("ctx", {}).get("expected", "?") for e in mismatches
                if [p for p in e["loc"] if not _is_union_tag(p)] == tag_loc]
    return deepest_tag, "Input should be " + " or ".join(dict.fromkeys(expected))


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first validation problem as (message naming the field, field)."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    # NOTE: pydantic reports one error per union member, each under its member's tag ('str',
    # 'list[int]', a model's class name, ...); the member that got deepest into the value says
    # what is wrong with it, unless its tag (`type`, `role`) shows the client meant another.
    field = tuple(first.get("loc", ()))[:2]
    first, tags = _meant([e for e in errors if tuple(e.get("loc", ()))[:2] == field])
    loc = tuple(p for p in first.get("loc", ()) if not _is_union_tag(p))
    name = _field(loc)
    msg = tags or first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return f"missing required field '{name}'", name
    return f"invalid value for '{name}': {msg}", name


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as its route family's error body; unexpected ones are logged, never shown."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc, request.scope["path"])

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(APIError(400, message, param), request.scope["path"])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:
            phrase = "error"
        message = exc.detail if isinstance(exc.detail, str) else phrase
        return error_response(APIError(exc.status_code, message, headers=getattr(exc, "headers", None)),
                              request.scope["path"])

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, "internal server error", code="internal_error"),
                              request.scope["path"])
