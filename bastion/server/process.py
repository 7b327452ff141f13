"""An API-server process: HTTP (uvicorn on the launcher's shared socket) in front of every rank."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Callable

from bastion.security.runtime import SecurityRuntime
from bastion.transport.child_pipe import (ApiServerReady, ApiServerSpec, ControlWatch, EngineSet, RankDown,
                                       RankUp)

logger = logging.getLogger(__name__)


def run_api_server(spec: ApiServerSpec, control: ControlWatch, report: Callable) -> None:
    """Load the tokenizer and the HTTP stack while the engines load; once the launcher sends
    where they are, connect to every engine and serve until SIGTERM (drain) or launcher exit."""
    # NOTE: prometheus-client picks its multi-process storage when first imported.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = spec.metrics_dir
    import bastion.server.app  # noqa: F401 - the slow imports, done before the engines are ready
    from bastion.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec.model_path)
    sock = socket.socket(fileno=spec.listen_fd)
    engines = control.receive()
    if not isinstance(engines, EngineSet):
        raise RuntimeError(f"expected the engines from the launcher, got {type(engines).__name__}")
    asyncio.run(_serve(spec, engines, tokenizer, sock, control, report))


async def _serve(spec: ApiServerSpec, engines: EngineSet, tokenizer, sock: socket.socket,
                 control: ControlWatch, report: Callable) -> None:
    from bastion.server import metrics
    from bastion.server.app import build_app
    from bastion.server.engine_client import EngineClient
    from bastion.server.frontend import Frontend
    from bastion.server.grammar_check import GrammarChecker
    from bastion.server.http.server import HttpServer
    from bastion.structured.tokenizer import tokenizer_json

    security = SecurityRuntime(spec.security, spec.limits_dir)
    client = EngineClient(spec.index, engines.engines, spec.ipc_dir, spec.server.prefix_affinity_tokens,
                          spec.internal, spec.keys)
    await client.start()
    client.load_listeners.append(metrics.record_load)
    client.pull_listeners.append(metrics.record_kv_pulls)
    for rank in client.ranks:
        metrics.record_rank_up(rank.index, rank.alive)  # a rank on another node waits until it registers
    loop = asyncio.get_running_loop()

    def on_control(message) -> None:
        if isinstance(message, RankDown):
            client.rank_down(message.index, message.reason, message.state, message.restarts)
            metrics.record_rank_up(message.index, False)
        elif isinstance(message, RankUp):
            loop.create_task(client.rank_up(message.index, message.input_endpoint,
                                            message.server_key, message.restarts,
                                            message.kv_endpoint, message.kv_key, message.kv_role))
            metrics.record_rank_up(message.index, True)
    control.set_handler(lambda m: loop.call_soon_threadsafe(on_control, m))

    loop.add_signal_handler(signal.SIGHUP, security.hangup)
    grammar = GrammarChecker(spec.server.structured, tokenizer_json(tokenizer), engines.vocab_size,
                             _eos_ids(spec.model_path, tokenizer))
    frontend = Frontend(spec.server, client, tokenizer, engines.max_model_len, engines.vocab_size,
                        security.limits, grammar)
    responses_store = _responses_store(spec)
    app = build_app(frontend, security.authenticator, spec.security, security.audit, spec.index, spec.name,
                    responses_store)
    server = HttpServer(app, spec.server, security.ssl_context, spec.server.shutdown_timeout)
    serving = await server.start(sock)
    report(ApiServerReady(spec.index))
    await serving
    await grammar.close()
    client.close()
    security.close()
    if responses_store is not None:
        responses_store.close()


def _responses_store(spec: ApiServerSpec):
    """This process's client of the launcher's response store (None when it keeps none)."""
    from bastion.server import metrics
    from bastion.server.responses.store.client import ResponseStoreClient

    if not spec.server.responses_store.enabled:
        return None
    store = ResponseStoreClient(spec.server.responses_store, spec.ipc_dir)
    store.on_size = metrics.record_responses_stored
    return store


def _eos_ids(model_path: str, tokenizer) -> list[int]:
    """The model's EOS ids, as its engines read them (config.json), else the tokenizer's."""
    from bastion.model.arch import ModelLoadError, read_arch_config
    try:
        return list(read_arch_config(model_path).eos_token_ids)
    except (ModelLoadError, OSError, ValueError):
        return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
