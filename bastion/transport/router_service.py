"""A launcher-thread service on a ROUTER socket in a private ipc directory, and its clients' DEALER:
the shape the limits service (security/shared_limits.py) and the response store
(server/responses/store/) share.

A daemon thread polls the socket; every two-frame message (the DEALER's identity, one msgpack
payload) is decoded with the service's `decoder` and handed to `handle`; a malformed one is
logged (its kind, not its content) and dropped. `idle` runs whenever a poll interval passes with
nothing to read. Messages larger than `max_bytes` never reach the service (ZMQ drops them).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading

import msgspec
import zmq
import zmq.asyncio

logger = logging.getLogger(__name__)

_encoder = msgspec.msgpack.Encoder()


class RouterService:
    """Subclass and give `handle` (and `idle`, if the service has housekeeping)."""

    def __init__(self, name: str, address: str, decoder: msgspec.msgpack.Decoder, max_bytes: int,
                 poll_ms: int = 200) -> None:
        self.name, self.decoder, self.poll_ms = name, decoder, poll_ms
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        self.sock.bind(address)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def handle(self, identity: bytes, message) -> None:
        raise NotImplementedError

    def idle(self) -> None:
        """Called when a poll interval passed with no message."""

    def send(self, identity: bytes, message) -> None:
        """One reply to the DEALER `identity` (called on the service's thread)."""
        self.sock.send_multipart([identity, _encoder.encode(message)])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        self.ctx.term()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(self.poll_ms):
                self.idle()
                continue
            frames = self.sock.recv_multipart()
            if len(frames) != 2:
                logger.warning("dropped a malformed %s message (%d frames)", self.name, len(frames))
                continue
            identity, payload = frames
            try:
                message = self.decoder.decode(payload)
            except msgspec.DecodeError as exc:
                logger.warning("dropped a malformed %s message: %s", self.name, type(exc).__name__)
                continue
            self.handle(identity, message)


class DealerClient:
    """An API server's side of a `RouterService`: one asyncio DEALER, requests numbered by
    ticket, replies (decoded with `decoder`) matched back to their ticket's future by one reader
    task started with the first request. Subclass `heard` to see every reply first (metrics);
    it returns False for a reply that answers no ticket."""

    def __init__(self, name: str, address: str, decoder: msgspec.msgpack.Decoder,
                 max_bytes: int | None = None) -> None:
        self.name, self.decoder = name, decoder
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if max_bytes is not None:
            self.sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        self.sock.connect(address)
        self._tickets = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    def heard(self, reply) -> bool:
        return True

    def expect_reply(self) -> tuple[int, asyncio.Future]:
        """A new ticket and the future its reply will fill; `forget(ticket)` once done with it."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        ticket = next(self._tickets)
        future = asyncio.get_running_loop().create_future()
        self._pending[ticket] = future
        return ticket, future

    def forget(self, ticket: int) -> None:
        self._pending.pop(ticket, None)

    async def send(self, message) -> None:
        await self.sock.send(_encoder.encode(message))

    def send_now(self, message) -> None:
        """Send without waiting (a full queue raises zmq.Again rather than blocking)."""
        self.sock.send(_encoder.encode(message), flags=zmq.NOBLOCK)

    async def _read(self) -> None:
        while True:
            payload = await self.sock.recv()
            try:
                reply = self.decoder.decode(payload)
            except msgspec.DecodeError:
                logger.warning("dropped a malformed %s reply", self.name)
                continue
            if not self.heard(reply):
                continue
            future = self._pending.get(reply.ticket)
            if future is not None and not future.done():
                future.set_result(reply)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.sock.close()
        self.ctx.term()
