"""The response store's service: one `ResponseTable` in a launcher thread, answering every API
server over a ROUTER socket in the launcher's private ipc directory (as the limits service,
security/shared_limits.py). Records live in this process's memory only: when the launcher
stops, they are gone."""
from __future__ import annotations

import logging
import threading

import msgspec
import zmq

from bastion.config.responses import ResponseStoreConfig
from bastion.server.responses.store import wire
from bastion.server.responses.store.table import ResponseTable

logger = logging.getLogger(__name__)

POLL_MS = 1000  # the longest wait between sweeps of expired records


class ResponseStoreService:
    """The one response table of a server (a launcher thread)."""

    def __init__(self, config: ResponseStoreConfig, ipc_dir: str) -> None:
        self.table = ResponseTable(config)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
        self.sock.bind(wire.endpoint(ipc_dir))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="response-store", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        self.ctx.term()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(POLL_MS):
                self.table.expire()
                continue
            frames = self.sock.recv_multipart()
            if len(frames) != 2:
                logger.warning("dropped a malformed response-store message (%d frames)", len(frames))
                continue
            identity, payload = frames
            try:
                message = wire.request_decoder.decode(payload)
            except msgspec.DecodeError as exc:
                logger.warning("dropped a malformed response-store message: %s", type(exc).__name__)
                continue
            self.sock.send_multipart([identity, wire.encoder.encode(self._answer(message))])

    def _answer(self, message: wire.Request) -> wire.Reply:
        table = self.table
        if isinstance(message, wire.Put):
            kept = table.put(message.owner, message.id, message.record)
            return wire.Kept(message.ticket, kept, table.count, table.bytes)
        if isinstance(message, wire.Get):
            record = table.get(message.owner, message.id)
            if record is None:
                return wire.Missing(message.ticket, table.count, table.bytes)
            return wire.Found(message.ticket, record, table.count, table.bytes)
        if table.delete(message.owner, message.id):
            return wire.Deleted(message.ticket, table.count, table.bytes)
        return wire.Missing(message.ticket, table.count, table.bytes)
