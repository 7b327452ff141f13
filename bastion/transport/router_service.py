"""A launcher-thread service on a ROUTER socket in a private ipc directory: the shape the limits
service (security/shared_limits.py) and the response store (server/responses/store/) share.

A daemon thread polls the socket; every two-frame message (the DEALER's identity, one msgpack
payload) is decoded with the service's `decoder` and handed to `handle`; a malformed one is
logged (its kind, not its content) and dropped. `idle` runs whenever a poll interval passes with
nothing to read. Messages larger than `max_bytes` never reach the service (ZMQ drops them).
"""
from __future__ import annotations

import logging
import threading

import msgspec
import zmq

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
