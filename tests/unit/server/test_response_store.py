"""The response store: its table's bounds (time, count, bytes, one record's size) and owners,
and the launcher's service with two clients (two API servers) over its real ipc socket."""
from __future__ import annotations

import asyncio

import pytest
import zmq

from bastion.config.responses import ResponseStoreConfig
from bastion.server.responses.store import wire
from bastion.server.responses.store.client import ResponseStoreClient
from bastion.server.responses.store.service import ResponseStoreService
from bastion.server.responses.store.table import ResponseTable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def table(**bounds) -> tuple[ResponseTable, Clock]:
    clock = Clock()
    config = ResponseStoreConfig(**{"ttl_s": 10, "max_count": 3, "max_bytes": 4096,
                                    "max_response_bytes": 2048, **bounds})
    return ResponseTable(config, clock), clock


def test_a_record_is_its_owners_alone():
    store, _ = table()
    assert store.put("key:alice", "resp_1", b"mine")
    assert store.get("key:alice", "resp_1") == b"mine"
    assert store.get("key:bob", "resp_1") is None and store.get("jwt:alice", "resp_1") is None
    assert not store.delete("key:bob", "resp_1") and store.count == 1
    assert not store.put("key:bob", "resp_1", b"taken")  # nobody writes over another's record
    assert store.delete("key:alice", "resp_1") and store.get("key:alice", "resp_1") is None
    assert (store.count, store.bytes) == (0, 0)


def test_records_expire_and_the_oldest_go_first_past_the_count_and_bytes():
    store, clock = table()
    for i in range(4):
        clock.now = i
        assert store.put("o", f"r{i}", b"x" * 100)
    assert store.get("o", "r0") is None and store.count == 3  # max_count
    assert store.put("o", "big", b"y" * 2000) and store.put("o", "big2", b"y" * 2000)
    assert store.bytes <= 4096 and store.get("o", "r3") is None and store.get("o", "big") is not None
    assert not store.put("o", "huge", b"z" * 2049)  # over max_response_bytes: refused
    clock.now = 100
    store.expire()
    assert (store.count, store.bytes) == (0, 0)


def test_the_bounds_are_checked_naming_the_flags():
    with pytest.raises(ValueError, match="--responses-store-max-bytes"):
        ResponseStoreConfig(max_bytes=2048, max_response_bytes=4096)
    with pytest.raises(ValueError, match="--responses-store-ttl-s"):
        ResponseStoreConfig(ttl_s=0)
    assert not ResponseStoreConfig(max_count=0).enabled


def test_two_api_servers_share_one_store_and_a_malformed_message_is_dropped(tmp_path):
    config = ResponseStoreConfig(max_response_bytes=4096, max_bytes=8192)
    service = ResponseStoreService(config, str(tmp_path))

    async def scenario() -> list:
        a, b = ResponseStoreClient(config, str(tmp_path)), ResponseStoreClient(config, str(tmp_path))
        sizes = []
        b.on_size = lambda count, size: sizes.append((count, size))
        rogue = zmq.Context.instance().socket(zmq.DEALER)
        rogue.connect(wire.endpoint(str(tmp_path)))
        rogue.send(b"\x93not a message")  # dropped; the service answers the next one
        try:
            seen = [await a.put("key:alice", "resp_1", b"record"), await b.get("key:alice", "resp_1"),
                    await b.get("key:bob", "resp_1"), await a.put("key:alice", "resp_2", b"r" * 5000),
                    await b.delete("key:bob", "resp_1"), await b.delete("key:alice", "resp_1"),
                    await a.get("key:alice", "resp_1")]
            return seen + [sizes[-1]]
        finally:
            rogue.close()
            a.close()
            b.close()

    try:
        assert asyncio.run(scenario()) == [True, b"record", None, False, False, True, None, (0, 0)]
    finally:
        service.stop()
