"""A real HTTPS server for tests: answers /health with 200 over TLS built by bastion's own
context code (so it can require client certificates); an impostor in supervisor tests."""
from __future__ import annotations

import contextlib
import http.server
import threading

from bastion.config.security import TlsConfig
from bastion.security.tls import build_context


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"status": "ok"}'
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # failed handshakes are what the tests are about


@contextlib.contextmanager
def tls_server(tls: TlsConfig, port: int = 0):
    """Serve /health with `tls` on 127.0.0.1:`port` (0 picks one); yields the URL."""
    server = _QuietServer(("127.0.0.1", port), _Health)
    server.socket = build_context(tls).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
