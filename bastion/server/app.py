"""The FastAPI application of one API-server process: routes, guards and error shapes."""
from __future__ import annotations

import json

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from bastion import __version__
from bastion.config.security import SecurityConfig
from bastion.security.audit import AuditLog
from bastion.security.auth import Authenticator
from bastion.server import metrics
from bastion.server.frontend import ServerState
from bastion.server.http.errors import error_body, install_error_handlers
from bastion.server.http.middleware import AuditTrail, AuthGuard
from bastion.server.routes.admin import router as admin_router
from bastion.server.routes.info import router as info_router
from bastion.server.routes.openai import router as openai_router
from bastion.server.routes.sglang import router as sglang_router


class BodyLimit:
    """413 for request bodies over `limit` bytes, by Content-Length or by counting the stream."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._reject(send)
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

    async def _reject(self, send) -> None:
        body = json.dumps(error_body(413, self.message)).encode()
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


def build_app(state: ServerState, authenticator: Authenticator, security: SecurityConfig,
              audit: AuditLog | None = None, api_server: int = 0) -> FastAPI:
    """The app; middleware from the outside in: metrics, audit trail, auth guard, body limit."""
    app = FastAPI(title="bastion", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.bastion, app.state.authenticator, app.state.security = state, authenticator, security
    install_error_handlers(app)
    for router in (openai_router, sglang_router, info_router, admin_router):
        # NOTE: the routes themselves, not include_router's lazy wrapper: the auth guard and
        # the route-walk test must see every route with its endpoint and decision.
        app.router.routes.extend(router.routes)
    app.add_middleware(BodyLimit, limit=state.config.max_request_body_bytes)
    app.add_middleware(AuthGuard, routes=app.router.routes, authenticator=authenticator)
    app.add_middleware(AuditTrail, log=audit, api_server=api_server)
    app.add_middleware(RequestMetrics)
    return app
