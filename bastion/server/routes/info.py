"""Routes that generate nothing: models, tokenize/detokenize, health, version, metrics."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from bastion import __version__
from bastion.security.auth import public, requires
from bastion.server import metrics
from bastion.server.frontend import ServerState
from bastion.server.http.errors import APIError
from bastion.server.http.middleware import principal_of
from bastion.server.routes.protocol import DetokenizeRequest, TokenizeRequest

router = APIRouter()
_STARTED = int(time.time())


def _state(request: Request) -> ServerState:
    return request.app.state.bastion


@router.get("/v1/models")
@requires("inference")
async def models(request: Request) -> dict:
    state = _state(request)
    data = [{"id": name, "object": "model", "created": _STARTED, "owned_by": "bastion",
             "root": state.model_name, "max_model_len": state.max_model_len}
            for name in state.config.served_model_names if principal_of(request).may_use(name)]
    return {"object": "list", "data": data}


@router.post("/tokenize")
@requires("inference")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    state = _state(request)
    state.check_model(body.model, request)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of 'prompt' or 'messages'", "prompt")
    if body.messages is not None:
        tokens = state.chat_prompt(body.messages, body.add_generation_prompt)
    else:
        tokens = state.text_prompt(body.prompt, body.add_special_tokens)
    return {"count": len(tokens), "max_model_len": state.max_model_len, "tokens": tokens}


@router.post("/detokenize")
@requires("inference")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    state = _state(request)
    state.check_model(body.model, request)
    state.check_ids(body.tokens, "tokens")
    return {"prompt": state.backend.decode(body.tokens, skip_special_tokens=False)}


@router.get("/health")
@public
async def health(request: Request) -> JSONResponse:
    ranks = [{"rank": r.index, "state": r.state, "restarts": r.restarts,
              **({"reason": r.reason} if not r.alive else {})} for r in _state(request).client.ranks]
    ok = all(r["state"] == "ready" for r in ranks)
    return JSONResponse({"status": "ok" if ok else "unavailable", "ranks": ranks},
                        status_code=200 if ok else 503)


@router.get("/version")
@public
async def version() -> dict:
    return {"version": __version__}


@router.get("/metrics")
@requires("metrics")
async def prometheus_metrics() -> Response:
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
