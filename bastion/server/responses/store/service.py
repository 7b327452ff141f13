"""The response store's service: one `ResponseTable` in a launcher thread, answering every API
server over a ROUTER socket in the launcher's private ipc directory (as the limits service,
security/shared_limits.py). Records live in this process's memory only: when the launcher
stops, they are gone."""
from __future__ import annotations

import logging

from bastion.config.responses import ResponseStoreConfig
from bastion.server.responses.store import wire
from bastion.server.responses.store.table import ResponseTable
from bastion.transport.router_service import RouterService

logger = logging.getLogger(__name__)

POLL_MS = 1000  # the longest wait between sweeps of expired records


class ResponseStoreService(RouterService):
    """The one response table of a server (a launcher thread); expired records are swept
    whenever a poll interval passes with nothing to read."""

    def __init__(self, config: ResponseStoreConfig, ipc_dir: str) -> None:
        self.table = ResponseTable(config)
        super().__init__("response-store", wire.endpoint(ipc_dir), wire.request_decoder,
                         config.max_message_bytes, POLL_MS)

    def idle(self) -> None:
        self.table.expire()

    def handle(self, identity: bytes, message: wire.Request) -> None:
        self.send(identity, self._answer(message))

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
