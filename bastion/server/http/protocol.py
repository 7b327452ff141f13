"""uvicorn's h11 protocol with the limits a public listener needs: a request-head deadline, one
total head size, a cap on open connections, early 400 for bytes that are not HTTP, and a close
(not a drain) when a response is sent before the request body was read.

Peers: the head deadline is nginx `client_header_timeout` (60 s; Apache `RequestReadTimeout
header=`); it also bounds a connection that never sends a request and, through asyncio's
`ssl_handshake_timeout`, a stalled TLS handshake (uvicorn itself has only `timeout_keep_alive`,
which bounds the idle time between requests). The head size is nginx `large_client_header_buffers`
(4 x 8k) and uvicorn's `h11_max_incomplete_event_size` (16 KiB, which h11 checks only while a head
is incomplete, so one large write got through). The connection cap is nginx `worker_connections`
(uvicorn's `limit_concurrency` counts connections too, but holds them and answers 503 only once a
request arrives). The unread-body close is nginx's behaviour for a request it answers early, less
its `lingering_close` read.
"""
from __future__ import annotations

import json
import re

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from bastion.server.http.errors import error_body

CLOSE_GRACE_S = 1.0  # a closing TLS connection gets this long for close_notify, then is aborted
BLANK_LINE = re.compile(b"\n\r?\n")  # the end of a head, as h11 finds it
METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")  # RFC 9110 token characters
REQUEST_LINE = re.compile(rb"[\x20-\x7e]*")  # method SP target SP version: visible ASCII only


def raw_response(status: int, reason: str, message: str, *extra: tuple[str, str]) -> bytes:
    """A whole HTTP/1.1 response with an OpenAI error body and `Connection: close`."""
    body = json.dumps(error_body(status, message)).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body))),
               ("connection", "close"), *extra]
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode() + b"\r\n" + body


def head_problem(buffer: bytes, limit: int) -> int | None:
    """431 if the head (request line and headers, to the blank line) is over `limit` bytes, 400 if
    what has arrived cannot start a request line; None while it may still become a good head."""
    end = BLANK_LINE.search(buffer)
    if (end.end() if end else len(buffer)) > limit:
        return 431
    line = buffer.split(b"\n", 1)[0].removesuffix(b"\r")
    method = METHOD.match(line).end()
    if (method == 0 and line) or (method < len(line) and line[method] != 0x20):
        return 400
    return None if REQUEST_LINE.fullmatch(line) else 400


class CloseUnreadBody:
    """ASGI wrapper: a response that starts before its request's body was read to the end says
    `Connection: close` (the protocol then closes instead of reading the rest)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        finished = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") == b"0"

        async def tracked_receive():
            nonlocal finished
            message = await receive()
            finished = finished or message["type"] != "http.request" or not message.get("more_body")
            return message

        async def closing_send(message):
            if message["type"] == "http.response.start" and not finished:
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*kept, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, tracked_receive, closing_send)


class LimitedH11Protocol(H11Protocol):
    """One connection: uvicorn's H11Protocol plus bastion's limits (see the module docstring)."""

    def __init__(self, *args, header_timeout: float, max_header_bytes: int, max_connections: int,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout, self.max_header_bytes = header_timeout, max_header_bytes
        self.max_connections = max_connections
        self.head_deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            return self.refuse(raw_response(503, "Service Unavailable", "too many open connections "
                                            f"(--max-connections {self.max_connections})",
                                            ("retry-after", "1")))
        self.arm_head_deadline()

    def connection_lost(self, exc) -> None:
        self.disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.head_deadline is None and self.conn.their_state is h11.IDLE:
            self.arm_head_deadline()  # a kept-alive connection: its next head starts now
        super().data_received(data)

    def handle_events(self) -> None:
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE:
            status = head_problem(self.conn.trailing_data[0], self.max_header_bytes)
            if status == 431:
                return self.refuse(raw_response(431, "Request Header Fields Too Large",
                                                "request head is larger than "
                                                f"{self.max_header_bytes} bytes (--max-request-header-bytes)"))
            if status == 400:
                return self.refuse(raw_response(400, "Bad Request", "not an HTTP/1.1 request"))
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self.disarm_head_deadline()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:
            # NOTE: answered before its body was read (413, 401...): h11 would read and discard the
            # rest to reuse the connection, at any length; close instead, reading nothing more.
            self.close_soon()
        super().on_response_complete()

    def arm_head_deadline(self) -> None:
        self.disarm_head_deadline()
        self.head_deadline = self.loop.call_later(self.header_timeout, self.head_timed_out)

    def disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def head_timed_out(self) -> None:
        self.head_deadline = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:
            self.refuse(raw_response(408, "Request Timeout", "request head not complete within "
                                     f"{self.header_timeout:g} s (--http-header-timeout)"))
        else:
            self.close_soon()  # never sent a request: nothing to answer

    def refuse(self, response: bytes) -> None:
        """Answer `response` (it says Connection: close) and close without reading further."""
        self.disarm_head_deadline()
        self.transport.write(response)
        self.close_soon()

    def close_soon(self) -> None:
        """Close (the write buffer still drains); abort if TLS close_notify is not done in a grace."""
        if self.cycle is not None:
            self.cycle.keep_alive = False
        self.transport.pause_reading()
        self.transport.close()
        self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)
