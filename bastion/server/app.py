"""The FastAPI application of one API-server process: routes, guards and error shapes."""
from __future__ import annotations

from fastapi import FastAPI

from bastion import __version__
from bastion.config.security import SecurityConfig
from bastion.security.audit import AuditLog
from bastion.security.auth import Authenticator
from bastion.server.frontend import Frontend
from bastion.server.http.errors import install_error_handlers
from bastion.server.http.middleware import AuditTrail, AuthGuard, BodyLimit, RequestMetrics
from bastion.server.routes.admin import router as admin_router
from bastion.server.routes.anthropic import router as anthropic_router
from bastion.server.routes.info import router as info_router
from bastion.server.routes.openai import router as openai_router
from bastion.server.routes.openapi import openapi_document
from bastion.server.routes.openapi import router as openapi_router
from bastion.server.routes.responses import router as responses_router
from bastion.server.routes.sglang import router as sglang_router


def build_app(frontend: Frontend, authenticator: Authenticator, security: SecurityConfig,
              audit: AuditLog | None = None, api_server: int = 0, server: str | None = None,
              responses_store=None) -> FastAPI:
    """The app; middleware from the outside in: metrics, audit trail, auth guard, body limit.
    `server` names this process in the audit log (default `api-server-N`). Its OpenAPI document
    is made here, once (`GET /openapi.json`; no /docs, no /redoc). `responses_store` is this
    process's client of the launcher's response store (None: responses are not kept)."""
    app = FastAPI(title="bastion", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.frontend, app.state.authenticator, app.state.security = frontend, authenticator, security
    app.state.responses_store = responses_store
    install_error_handlers(app)
    for router in (openai_router, anthropic_router, responses_router, sglang_router, info_router, admin_router,
                   openapi_router):
        # NOTE: the routes themselves, not include_router's lazy wrapper: the auth guard and
        # the route-walk test must see every route with its endpoint and decision.
        app.router.routes.extend(router.routes)
    app.state.openapi = openapi_document(app.router.routes, security)
    app.add_middleware(BodyLimit, limit=frontend.config.max_request_body_bytes)
    app.add_middleware(AuthGuard, routes=app.router.routes, authenticator=authenticator)
    app.add_middleware(AuditTrail, log=audit, api_server=api_server, server=server,
                       skip_probe_sha256=security.audit_skip_probe_sha256)
    app.add_middleware(RequestMetrics)
    return app
