"""`bench latency` against servers that misbehave, on real loopback sockets: an error status, a
stream that stalls, a stream that stops short of the tokens asked. Each is a `SideFailed` that
names the side and says what went wrong, within the request timeout."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bastion.bench.latency.measure import SideFailed, one_request
from bastion.bench.latency.sides import Side
from bastion.bench.load import LoadSettings
from bastion.bench.workloads import BenchRequest


class _Handler(BaseHTTPRequestHandler):
    mode = "error"

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.mode == "error":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom"}}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {"choices": [{"text": "a", "finish_reason": None}], "usage": {"completion_tokens": 1}}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()
        if self.mode == "stall":
            time.sleep(3)
            return
        last = {"choices": [{"text": "", "finish_reason": "stop"}], "usage": {"completion_tokens": 1}}
        self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    def start(mode: str) -> Side:
        handler = type("Handler", (_Handler,), {"mode": mode})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return Side("peer", "url", [], None, "unknown", url=url,
                    settings=LoadSettings(url, "m", concurrency=1, timeout=0.5))
    started: list[ThreadingHTTPServer] = []
    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def test_an_error_status_names_the_side_and_the_status(server):
    with pytest.raises(SideFailed, match=r"peer \(http://127.0.0.1:\d+\): a request failed: HTTP 500"):
        one_request(server("error"), BenchRequest([11, 12], 4), 0.5)


def test_a_stalled_stream_fails_after_the_request_timeout(server):
    with pytest.raises(SideFailed, match="nothing came for --request-timeout 0.5 s"):
        one_request(server("stall"), BenchRequest([11, 12], 4), 0.5)


def test_a_stream_short_of_the_tokens_asked_is_refused(server):
    with pytest.raises(SideFailed, match="asked for exactly 4 tokens .ignore_eos., got 1"):
        one_request(server("short"), BenchRequest([11, 12], 4), 0.5)
