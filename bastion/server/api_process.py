"""An API-server process: HTTP (uvicorn on the launcher's shared socket) in front of every rank."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Callable

from bastion.security.runtime import SecurityRuntime
from bastion.transport.control import ApiServerReady, ApiServerSpec, ControlWatch, RankDown, RankUp

logger = logging.getLogger(__name__)


def run_api_server(spec: ApiServerSpec, control: ControlWatch, report: Callable) -> None:
    """Load the tokenizer, connect to every engine, serve until SIGTERM (drain) or launcher exit."""
    # NOTE: prometheus-client picks its multi-process storage when first imported.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = spec.metrics_dir
    from bastion.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec.model_path)
    sock = socket.socket(fileno=spec.listen_fd)
    asyncio.run(_serve(spec, tokenizer, sock, control, report))


async def _serve(spec: ApiServerSpec, tokenizer, sock: socket.socket, control: ControlWatch,
                 report: Callable) -> None:
    import uvicorn

    from bastion.server import metrics
    from bastion.server.app import build_app
    from bastion.server.engine_client import EngineClient
    from bastion.server.state import ServerState

    security = SecurityRuntime(spec.security, spec.limits_dir)
    client = EngineClient(spec.index, spec.engines, spec.ipc_dir, spec.server.prefix_affinity_tokens,
                          spec.internal, spec.keys)
    await client.start()
    client.load_listeners.append(metrics.record_load)
    for rank in client.ranks:
        metrics.record_rank_up(rank.index, True)
    loop = asyncio.get_running_loop()

    def on_control(message) -> None:
        if isinstance(message, RankDown):
            client.rank_down(message.index, message.reason, message.state, message.restarts)
            metrics.record_rank_up(message.index, False)
        elif isinstance(message, RankUp):
            loop.create_task(client.rank_up(message.index, message.input_endpoint,
                                            message.server_key, message.restarts))
            metrics.record_rank_up(message.index, True)
    control.handler = lambda m: loop.call_soon_threadsafe(on_control, m)

    loop.add_signal_handler(signal.SIGHUP, security.hangup)
    state = ServerState(spec.server, client, tokenizer, spec.max_model_len, spec.vocab_size,
                        security.limits)
    app = build_app(state, security.authenticator, spec.security, security.audit, spec.index)
    config = uvicorn.Config(app, log_level=spec.server.log_level, access_log=False,
                            timeout_graceful_shutdown=spec.server.shutdown_timeout,
                            timeout_keep_alive=30, server_header=False)
    config.load()
    config.ssl = security.ssl_context  # NOTE: our own context: TLS >= 1.2, mTLS, hot refresh
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if serving.done():
        serving.result()
        raise RuntimeError("the HTTP server stopped during start-up")
    report(ApiServerReady(spec.index))
    await serving
    client.close()
    security.close()
