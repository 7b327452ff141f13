"""Admin routes (scope `admin`): credential reload and server information without secrets."""
from __future__ import annotations

import os
import signal

from fastapi import APIRouter, Request

from bastion import __version__
from bastion.security.auth import requires
from bastion.server.http.errors import APIError, refusals
from bastion.server.routes import frontend_of

router = APIRouter()


@router.post("/admin/reload-credentials", responses=refusals(400))
@requires("admin")
async def reload_credentials(request: Request) -> dict:
    """Re-read the key file and JWT key here, then have the launcher do it in every API server."""
    auth = request.app.state.authenticator
    if not auth.reload():
        raise APIError(400, "the credentials could not be reloaded (the key file or JWT key is not "
                            "usable; see the server log); the previous ones stay in force")
    os.kill(os.getppid(), signal.SIGHUP)  # NOTE: the launcher forwards SIGHUP to every API server
    return {"reloaded": True, "keys": len(auth.table.keys)}


@router.get("/server_info")
@requires("admin")
async def server_info(request: Request) -> dict:
    """What runs, and how it is protected; names and flags only, never a key or secret."""
    frontend, sec = frontend_of(request), request.app.state.security
    return {
        "version": __version__,
        "served_model_names": list(frontend.config.served_model_names),
        "max_model_len": frontend.max_model_len,
        "engine_ranks": [{"index": r.index, "alive": r.alive} for r in frontend.client.ranks],
        "tls": {"enabled": sec.tls.enabled, "client_certificates": sec.tls.cert_reqs,
                "refresh": sec.tls.refresh},
        "auth": {"api_keys": [k.name for k in request.app.state.authenticator.table.keys],
                 "jwt": sec.jwt.enabled, "jwt_issuer": sec.jwt.issuer,
                 "jwt_audience": sec.jwt.audience},
        "limits": {"default_requests_per_minute": sec.default_limits.requests_per_minute,
                   "default_tokens_per_minute": sec.default_limits.tokens_per_minute,
                   "default_max_concurrent_per_principal": sec.default_limits.max_concurrent_requests,
                   "max_concurrent_requests": sec.max_concurrent_requests,
                   "max_waiting_requests": sec.max_waiting_requests},
        "audit_log": sec.audit_log is not None,
    }
