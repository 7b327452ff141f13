"""ASGI middleware of an API server: the auth guard, the audit trail, the body limit and the
request counter.

The guard runs before routing: it finds the route a request will reach, reads that route's
auth decision, authenticates and authorizes, and stores the Principal on the request; a route
reads it, with the audit record, as one `Caller` (`caller_of`). A route without a decision is
refused (fail closed); an unknown path needs a valid credential before it gets its 404, so
unauthenticated clients cannot map the API.
"""
from __future__ import annotations

import json
import logging
import time
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from bastion.security.audit import AuditLog, RequestRecord, is_probe
from bastion.security.auth import (AUTHENTICATED, NO_DECISION, PUBLIC, AuthError, Authenticator,
                                   decision_of)
from bastion.server import metrics
from bastion.server.caller import Caller
from bastion.server.http.errors import error_body_for

logger = logging.getLogger(__name__)

WWW_AUTHENTICATE = b'Bearer realm="bastion"'


def caller_of(request) -> Caller:
    """Who is calling, from what the guard and the audit trail stored on this request (a route
    the guard authenticated)."""
    state = request.scope["state"]
    return Caller.of(state["principal"], state.get("record"))


class AuthGuard:
    """Authenticates and authorizes every HTTP request by its route's decision."""

    def __init__(self, app, routes: list, authenticator: Authenticator) -> None:
        self.app, self.routes, self.auth = app, routes, authenticator

    def decision(self, scope) -> str | tuple[str, ...]:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                decision = decision_of(getattr(route, "endpoint", None))
                if decision is None:
                    logger.error("route %s has no auth decision; refusing it", getattr(route, "path", "?"))
                    return NO_DECISION
                return decision
        return AUTHENTICATED

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        decision = self.decision(scope)
        state = scope.setdefault("state", {})
        if decision != PUBLIC:
            try:
                principal = self.auth.authenticate(dict(scope["headers"]))
                self.auth.authorize(principal, decision)
            except AuthError as exc:
                return await _deny(send, exc, scope["path"])
            state["principal"] = principal
            record = state.get("record")
            if record is not None:
                record.principal = principal
        await self.app(scope, receive, send)


async def _deny(send, exc: AuthError, path: str) -> None:
    headers = [(b"content-type", b"application/json")]
    if exc.status == 401:
        headers.append((b"www-authenticate", WWW_AUTHENTICATE))
    code = "invalid_api_key" if exc.status == 401 else "insufficient_scope"
    body = json.dumps(error_body_for(path, exc.status, str(exc), code=code)).encode()
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuditTrail:
    """Gives each request an id (the `x-request-id` header) and writes its audit line at the end.

    `server` names this process in every line (`api-server-0`, `supervisor`); `skip_probe_sha256`
    (`--audit-log-skip-probes`, a rank under the supervisor) is the digest of the supervisor's
    probe token: a probe presenting it leaves no line (security/audit.py: `is_probe`)."""

    def __init__(self, app, log: AuditLog | None, api_server: int | None = 0, server: str | None = None,
                 skip_probe_sha256: str | None = None) -> None:
        self.app, self.log, self.api_server = app, log, api_server
        self.server = server if server is not None else f"api-server-{api_server}"
        self.skip_probe_sha256 = skip_probe_sha256

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = scope.get("client")
        record = RequestRecord(uuid.uuid4().hex, self.api_server, scope["method"], scope["path"],
                               client[0] if client else None, time.monotonic(), server=self.server)
        written = self.log is not None and not is_probe(scope, self.skip_probe_sha256)
        scope.setdefault("state", {})["record"] = record
        status = 500

        async def tracked_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", record.request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            if written:
                self.log.write(record.line(status))


class BodyLimit:
    """413 for request bodies over `limit` bytes, by Content-Length or by counting the stream."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._reject(send, scope["path"])
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # NOTE: raised while the route reads its body; the error handlers answer 413.
                    raise StarletteHTTPException(413, self.message)
            return message

        await self.app(scope, counted_receive, send)

    @property
    def message(self) -> str:
        return f"request body is larger than {self.limit} bytes (--max-request-body-bytes)"

    async def _reject(self, send, path: str) -> None:
        body = json.dumps(error_body_for(path, 413, self.message)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Counts every HTTP request by its route template (never the raw path) and status."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def tracked_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            route = scope.get("route")
            metrics.REQUESTS.labels(getattr(route, "path", "other"), str(status)).inc()
