"""An API server's side of the response store: `put`, `get`, `delete`, each one round trip
to the launcher's service (a DEALER; replies matched by ticket)."""
from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Callable

import msgspec
import zmq
import zmq.asyncio

from bastion.config.responses import ResponseStoreConfig
from bastion.server.http.errors import APIError
from bastion.server.responses.store import wire

logger = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 10.0


class ResponseStoreClient:
    """Reaches the store in `ipc_dir`. `on_size` hears (records, bytes) with every reply (for
    /metrics). A store that does not answer in time is a 503."""

    def __init__(self, config: ResponseStoreConfig, ipc_dir: str) -> None:
        self.config = config
        self.on_size: Callable[[int, int], None] | None = None
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
        self.sock.connect(wire.endpoint(ipc_dir))
        self._tickets = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def put(self, owner: str, response_id: str, record: bytes) -> bool:
        """Keep `record`; False when it is over --responses-store-max-response-bytes (not sent)."""
        if len(record) > self.config.max_response_bytes:
            return False
        reply = await self._ask(lambda t: wire.Put(t, owner, response_id, record))
        return isinstance(reply, wire.Kept) and reply.kept

    async def get(self, owner: str, response_id: str) -> bytes | None:
        """The record `owner` kept under `response_id`, or None."""
        reply = await self._ask(lambda t: wire.Get(t, owner, response_id))
        return reply.record if isinstance(reply, wire.Found) else None

    async def delete(self, owner: str, response_id: str) -> bool:
        reply = await self._ask(lambda t: wire.Delete(t, owner, response_id))
        return isinstance(reply, wire.Deleted)

    async def _ask(self, make) -> wire.Reply:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        ticket = next(self._tickets)
        future = asyncio.get_running_loop().create_future()
        self._pending[ticket] = future
        try:
            await self.sock.send(wire.encoder.encode(make(ticket)))
            return await asyncio.wait_for(future, REPLY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise APIError(503, "the response store did not answer; try again") from None
        finally:
            self._pending.pop(ticket, None)

    async def _read(self) -> None:
        while True:
            payload = await self.sock.recv()
            try:
                reply = wire.reply_decoder.decode(payload)
            except msgspec.DecodeError:
                logger.warning("dropped a malformed response-store reply")
                continue
            if self.on_size is not None:
                self.on_size(reply.count, reply.size)
            future = self._pending.get(reply.ticket)
            if future is not None and not future.done():
                future.set_result(reply)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.sock.close()
        self.ctx.term()
