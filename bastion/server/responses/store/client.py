"""An API server's side of the response store: `put`, `get`, `delete`, each one round trip
to the launcher's service (a DEALER; replies matched by ticket)."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from bastion.config.responses import ResponseStoreConfig
from bastion.server.http.errors import APIError
from bastion.server.responses.store import wire
from bastion.transport.router_service import DealerClient

logger = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 10.0


class ResponseStoreClient(DealerClient):
    """Reaches the store in `ipc_dir`. `on_size` hears (records, bytes) with every reply (for
    /metrics). A store that does not answer in time is a 503."""

    def __init__(self, config: ResponseStoreConfig, ipc_dir: str) -> None:
        self.config = config
        self.on_size: Callable[[int, int], None] | None = None
        super().__init__("response-store", wire.endpoint(ipc_dir), wire.reply_decoder, config.max_message_bytes)

    def heard(self, reply) -> bool:
        if self.on_size is not None:
            self.on_size(reply.count, reply.size)
        return True

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
        ticket, future = self.expect_reply()
        try:
            await self.send(make(ticket))
            return await asyncio.wait_for(future, REPLY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise APIError(503, "the response store did not answer; try again") from None
        finally:
            self.forget(ticket)
