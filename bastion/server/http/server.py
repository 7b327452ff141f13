"""uvicorn as bastion runs it: on a socket the launcher bound, with bastion's own TLS context,
and a drain that never waits on a TLS client that does not answer the close.

Every connection goes through `LimitedH11Protocol` (protocol.py): the request-head deadline, head
size, connection cap and the close after an early answer; the same deadline bounds TLS handshakes.
Memory that closed connections leave behind goes back (memory.py: smaller TLS read buffers,
periodic collection of dead handshakes' cycles), for API servers and the supervisor alike.

Closing a TLS connection sends close_notify and waits for the peer's (asyncio allows it 30 s);
an idle keep-alive client that never reads would hold a whole drain for that long. Connections
that are only closing are aborted after a short grace; requests in flight still finish.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import resource
import socket
import ssl

import uvicorn

from bastion.config.server import ServerConfig
from bastion.server.http.memory import MemoryKeeper, tune_tls_buffers
from bastion.server.http.protocol import CloseUnreadBody, LimitedH11Protocol

logger = logging.getLogger(__name__)

TLS_CLOSE_GRACE_S = 1.0
SPARE_FDS = 256  # descriptors beyond --max-connections: logs, sockets to the engines, files


class HttpServer(uvicorn.Server):
    """One HTTP(S) listener; `own_signals=False` leaves SIGTERM/SIGINT to the caller."""

    def __init__(self, app, server: ServerConfig, ssl_context: ssl.SSLContext | None, shutdown_timeout: float,
                 own_signals: bool = True) -> None:
        protocol = functools.partial(LimitedH11Protocol, header_timeout=server.http_header_timeout,
                                     max_header_bytes=server.max_request_header_bytes,
                                     max_connections=server.max_connections)
        config = uvicorn.Config(CloseUnreadBody(app), log_level=server.log_level, access_log=False,
                                server_header=False, timeout_graceful_shutdown=shutdown_timeout,
                                timeout_keep_alive=30, http=protocol,
                                h11_max_incomplete_event_size=server.max_request_header_bytes)
        config.load()
        config.ssl = ssl_context  # NOTE: our own context: TLS >= 1.2, mTLS, hot refresh
        super().__init__(config)
        self.own_signals, self.limits = own_signals, server
        tune_tls_buffers()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        raise_descriptor_limit(self.limits.max_connections + SPARE_FDS)
        if self.config.ssl is None:
            return await super().startup(sockets)
        # NOTE: uvicorn passes no handshake timeout (asyncio's default is 60 s); the head deadline
        # bounds a stalled TLS handshake too. Shadowed on this loop only while uvicorn starts.
        loop = asyncio.get_running_loop()
        loop.create_server = functools.partial(loop.create_server,
                                               ssl_handshake_timeout=self.limits.http_header_timeout)
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server

    async def start(self, sock: socket.socket) -> asyncio.Task:
        """Serve on `sock` (bound, not yet listening); returns the serving task once it listens."""
        serving = asyncio.create_task(self.serve(sockets=[sock]))
        while not self.started and not serving.done():
            await asyncio.sleep(0.02)
        if serving.done():
            serving.result()
            raise RuntimeError("the HTTP server stopped during start-up")
        keeper = MemoryKeeper().start()  # NOTE: closed connections' memory goes back (memory.py)
        serving.add_done_callback(lambda _: keeper.stop())
        return serving

    @contextlib.contextmanager
    def capture_signals(self):
        if self.own_signals:
            with super().capture_signals():
                yield
        else:
            yield

    async def _wait_tasks_to_complete(self) -> None:
        # NOTE: uvicorn's own drain step (a private method); if it were renamed this override would
        # simply not run, and drains would wait for such clients as plain uvicorn does.
        reaper = asyncio.create_task(self._abort_stuck_tls_closes())
        try:
            await super()._wait_tasks_to_complete()
        finally:
            reaper.cancel()

    async def _abort_stuck_tls_closes(self) -> None:
        await asyncio.sleep(TLS_CLOSE_GRACE_S)
        while True:
            for connection in list(self.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None and transport.is_closing():
                    transport.abort()
            await asyncio.sleep(0.1)


def raise_descriptor_limit(wanted: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE toward `wanted` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        logger.warning("open-file limit %d is below --max-connections + %d; connections past it "
                       "wait in the listen queue", hard, SPARE_FDS)
