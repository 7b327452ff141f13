"""Routes that generate nothing: models, tokenize/detokenize, health, version, metrics."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from bastion import __version__
from bastion.security.auth import public, requires
from bastion.server import metrics
from bastion.server.http.errors import refusals
from bastion.server.http.middleware import caller_of
from bastion.server.routes import frontend_of
from bastion.server.routes.protocol import DetokenizeRequest, TokenizeRequest

router = APIRouter()
_STARTED = int(time.time())


@router.get("/v1/models")
@requires("inference")
async def models(request: Request) -> dict:
    frontend = frontend_of(request)
    data = [{"id": name, "object": "model", "created": _STARTED, "owned_by": "bastion",
             "root": frontend.model_name, "max_model_len": frontend.max_model_len}
            for name in frontend.models(caller_of(request))]
    return {"object": "list", "data": data}


@router.post("/tokenize", responses=refusals(404))
@requires("inference")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    frontend = frontend_of(request)
    tokens = frontend.tokenize(body, caller_of(request))
    return {"count": len(tokens), "max_model_len": frontend.max_model_len, "tokens": tokens}


@router.post("/detokenize", responses=refusals(404))
@requires("inference")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    return {"prompt": frontend_of(request).detokenize(body.model, body.tokens, caller_of(request))}


@router.get("/health", responses=refusals(503))
@public
async def health(request: Request) -> JSONResponse:
    ranks = [{"rank": r.index, "state": r.state, "restarts": r.restarts,
              **({"reason": r.reason} if not r.alive else {})} for r in frontend_of(request).client.ranks]
    ok = all(r["state"] == "ready" for r in ranks)
    return JSONResponse({"status": "ok" if ok else "unavailable", "ranks": ranks},
                        status_code=200 if ok else 503)


@router.get("/version")
@public
async def version() -> dict:
    return {"version": __version__}


@router.get("/metrics", response_class=PlainTextResponse)
@requires("metrics")
async def prometheus_metrics(request: Request) -> Response:
    limits = frontend_of(request).limits
    if limits is not None:
        # NOTE: asked at scrape time: the lengths pushed to several API servers may be set out
        # of order, and the gauge shows the one set last.
        await limits.queue_length()
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
