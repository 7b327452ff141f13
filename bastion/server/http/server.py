"""uvicorn as bastion runs it: on a socket the launcher bound, with bastion's own TLS context,
and a drain that never waits on a TLS client that does not answer the close.

Closing a TLS connection sends close_notify and waits for the peer's (asyncio allows it 30 s);
an idle keep-alive client that never reads would hold a whole drain for that long. Connections
that are only closing are aborted after a short grace; requests in flight still finish.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import uvicorn

TLS_CLOSE_GRACE_S = 1.0


class HttpServer(uvicorn.Server):
    """One HTTP(S) listener; `own_signals=False` leaves SIGTERM/SIGINT to the caller."""

    def __init__(self, app, log_level: str, ssl_context: ssl.SSLContext | None, shutdown_timeout: float,
                 own_signals: bool = True) -> None:
        config = uvicorn.Config(app, log_level=log_level, access_log=False, server_header=False,
                                timeout_graceful_shutdown=shutdown_timeout, timeout_keep_alive=30)
        config.load()
        config.ssl = ssl_context  # NOTE: our own context: TLS >= 1.2, mTLS, hot refresh
        super().__init__(config)
        self.own_signals = own_signals

    async def start(self, sock: socket.socket) -> asyncio.Task:
        """Serve on `sock` (bound, not yet listening); returns the serving task once it listens."""
        serving = asyncio.create_task(self.serve(sockets=[sock]))
        while not self.started and not serving.done():
            await asyncio.sleep(0.02)
        if serving.done():
            serving.result()
            raise RuntimeError("the HTTP server stopped during start-up")
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
