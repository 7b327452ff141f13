"""The response store's table: records by id, each with its owner, kept for a bounded time,
count and size. Pure and single-threaded (the service's thread owns it)."""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from bastion.config.responses import ResponseStoreConfig


@dataclass
class _Entry:
    owner: str
    record: bytes
    expires: float


class ResponseTable:
    """Records by response id. A record is found and deleted only by its owner (another owner
    sees nothing, as if it did not exist). The oldest go first: past `ttl_s`, past `max_count`
    records, or past `max_bytes` of records in all; a record over `max_response_bytes` is refused."""

    def __init__(self, config: ResponseStoreConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.clock = config, clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0

    @property
    def count(self) -> int:
        return len(self._entries)

    def put(self, owner: str, response_id: str, record: bytes) -> bool:
        """Keep `record` under `response_id` for `owner`; False when it is too large, or the id
        is another owner's."""
        self.expire()
        if len(record) > self.config.max_response_bytes:
            return False
        old = self._entries.get(response_id)
        if old is not None:
            if old.owner != owner:
                return False
            self._drop(response_id)
        self._entries[response_id] = _Entry(owner, record, self.clock() + self.config.ttl_s)
        self.bytes += len(record)
        while self.count > self.config.max_count or self.bytes > self.config.max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def get(self, owner: str, response_id: str) -> bytes | None:
        self.expire()
        entry = self._entries.get(response_id)
        return entry.record if entry is not None and entry.owner == owner else None

    def delete(self, owner: str, response_id: str) -> bool:
        self.expire()
        entry = self._entries.get(response_id)
        if entry is None or entry.owner != owner:
            return False
        self._drop(response_id)
        return True

    def expire(self) -> None:
        """Forget every record past its time (records expire in the order they were kept)."""
        now = self.clock()
        while self._entries:
            first = next(iter(self._entries))
            if self._entries[first].expires > now:
                return
            self._drop(first)

    def _drop(self, response_id: str) -> None:
        self.bytes -= len(self._entries.pop(response_id).record)
