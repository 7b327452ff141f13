"""The response store's wire: API servers (DEALER) <-> the launcher's store (ROUTER).

Typed msgspec messages as msgpack, decoded against an allowlist; a frame over the socket's size
bound (`ResponseStoreConfig.max_message_bytes`) is dropped by ZMQ. A record is opaque bytes to
the service: it never reads, logs or counts what a response says. Every reply carries the
store's size (records and bytes), for the API servers' metrics."""
from __future__ import annotations

import msgspec


class Put(msgspec.Struct, tag="put"):
    ticket: int
    owner: str
    id: str
    record: bytes


class Get(msgspec.Struct, tag="get"):
    ticket: int
    owner: str
    id: str


class Delete(msgspec.Struct, tag="delete"):
    ticket: int
    owner: str
    id: str


class Kept(msgspec.Struct, tag="kept"):
    """The answer to a `Put`: `kept` False when the record was refused (too large)."""

    ticket: int
    kept: bool
    count: int
    size: int


class Found(msgspec.Struct, tag="found"):
    ticket: int
    record: bytes
    count: int
    size: int


class Missing(msgspec.Struct, tag="missing"):
    """No such record for this owner (gone, expired, never kept, or another owner's)."""

    ticket: int
    count: int
    size: int


class Deleted(msgspec.Struct, tag="deleted"):
    ticket: int
    count: int
    size: int


Request = Put | Get | Delete
Reply = Kept | Found | Missing | Deleted

request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)


def endpoint(ipc_dir: str) -> str:
    """Where the store listens: a socket in the launcher's private 0700 ipc directory."""
    return f"ipc://{ipc_dir}/responses"
