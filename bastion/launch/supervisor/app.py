"""The supervisor's own HTTP(S) endpoints: liveness, readiness for orchestrators, rank details.

`/health` and `/ready` are public (what a Kubernetes probe can call); `/ranks` shows URLs,
states, restarts, pids and probe results, so it needs a credential with the `metrics` or
`admin` scope, checked by the same guard as the ranks' routes. Every request is written to the
`--audit-log` by the same audit trail as the ranks', as `"server": "supervisor"`.
"""
from __future__ import annotations

import time
from typing import Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from bastion import __version__
from bastion.launch.supervisor.supervised_rank import SupervisedRank
from bastion.security.audit import AuditLog
from bastion.security.auth import Authenticator, public, requires
from bastion.server.http.errors import install_error_handlers
from bastion.server.http.middleware import AuditTrail, AuthGuard

router = APIRouter()


class SupervisorView(Protocol):
    """What the endpoints read from the supervisor."""

    phase: str  # starting | serving | draining
    slots: list[SupervisedRank]
    ready_ranks_needed: int


def _view(request: Request) -> SupervisorView:
    return request.app.state.supervisor


def _counts(view: SupervisorView) -> dict:
    return {"ready_ranks": sum(slot.ready for slot in view.slots), "min_ready_ranks": view.ready_ranks_needed,
            "ranks": len(view.slots)}


@router.get("/health")
@public
async def health(request: Request) -> dict:
    """Liveness: the supervisor runs (its ranks may not)."""
    return {"status": "ok", "phase": _view(request).phase, "version": __version__}


@router.get("/ready")
@public
async def ready(request: Request) -> JSONResponse:
    """200 while at least --min-ready-ranks ranks pass their probes; 503 otherwise and while stopping."""
    view = _view(request)
    counts = _counts(view)
    ok = view.phase != "draining" and counts["ready_ranks"] >= counts["min_ready_ranks"]
    return JSONResponse({"status": "ready" if ok else "not ready", **counts}, status_code=200 if ok else 503)


@router.get("/ranks")
@requires("metrics", "admin")
async def ranks(request: Request) -> dict:
    view = _view(request)
    now = time.monotonic()
    return {"phase": view.phase, **_counts(view), "data": [slot.describe(now) for slot in view.slots]}


def build_supervisor_app(view: SupervisorView, authenticator: Authenticator,
                         audit: AuditLog | None = None) -> FastAPI:
    """The supervisor's app; middleware from the outside in: audit trail, auth guard."""
    app = FastAPI(title="bastion supervisor", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.supervisor = view
    install_error_handlers(app)
    app.router.routes.extend(router.routes)  # NOTE: the routes themselves, for the auth guard
    app.add_middleware(AuthGuard, routes=app.router.routes, authenticator=authenticator)
    app.add_middleware(AuditTrail, log=audit, api_server=None, server="supervisor")
    return app
