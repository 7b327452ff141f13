"""Limits shared by every API server of one server: one Limiter in the launcher, reached over ipc.

The launcher runs `LimitsService` in a thread (a ROUTER socket in its private 0700 ipc
directory); each API server holds a `LimitsClient` (DEALER). An admission is one round trip;
a request that must wait for a global slot is told so (`Queued`) and gets its `Admitted` later,
so the queue is one line across all processes (round-robin by tenant, see `FairQueue`), and
the queue bound (--max-queued-requests) is one bound for the whole server. Every reply carries
the queue's length, for the API servers' metrics. Messages are a typed allowlist; a malformed
one is logged and dropped.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

import msgspec

from bastion.config.security import Limits
from bastion.security.ratelimit import Limiter, Refusal
from bastion.transport.router_service import DealerClient, RouterService

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4096


class Acquire(msgspec.Struct, tag="acquire"):
    ticket: int
    key: str
    limits: Limits
    tokens: int
    group: str = ""
    seqs: int = 1


class Release(msgspec.Struct, tag="release"):
    ticket: int
    used_tokens: int


class QueueQuery(msgspec.Struct, tag="queue_query"):
    """How many requests wait now (for /metrics: a pushed length may arrive out of order)."""

    ticket: int


class Admitted(msgspec.Struct, tag="admitted"):
    ticket: int
    queued: int = 0


class Queued(msgspec.Struct, tag="queued"):
    """The ticket waits for a slot; `Admitted` follows (or nothing, if it is released first)."""

    ticket: int
    queued: int = 0


class Refused(msgspec.Struct, tag="refused"):
    ticket: int
    retry_after: float
    message: str
    status: int = 429
    queued: int = 0


class QueueLength(msgspec.Struct, tag="queue_length"):
    """The queue changed without admitting anyone (a waiting request gave up)."""

    queued: int


class QueueReport(msgspec.Struct, tag="queue_report"):
    """The answer to a `QueueQuery`."""

    ticket: int
    queued: int


_request_decoder = msgspec.msgpack.Decoder(Acquire | Release | QueueQuery)
_reply_decoder = msgspec.msgpack.Decoder(Admitted | Queued | Refused | QueueLength | QueueReport)


def endpoint(ipc_dir: str) -> str:
    return f"ipc://{ipc_dir}/limits"


class LimitsService(RouterService):
    """The one Limiter of a server, answering every API server (a launcher thread)."""

    def __init__(self, limiter: Limiter, ipc_dir: str) -> None:
        self.limiter = limiter
        super().__init__("limits", endpoint(ipc_dir), _request_decoder, MAX_MESSAGE_BYTES)

    def handle(self, identity: bytes, message: Acquire | Release | QueueQuery) -> None:
        lim = self.limiter
        if isinstance(message, QueueQuery):
            self.send(identity, QueueReport(message.ticket, lim.queued))
            return
        if isinstance(message, Acquire):
            result = lim.acquire((identity, message.ticket), message.key, message.limits,
                                 message.tokens, message.group or None, max(1, message.seqs))
            if isinstance(result, Refusal):
                self.send(identity, Refused(message.ticket, result.retry_after, result.message,
                                              result.status, lim.queued))
            else:
                reply = Admitted if result else Queued
                self.send(identity, reply(message.ticket, lim.queued))
            return
        before = lim.queued
        admitted = lim.release((identity, message.ticket), message.used_tokens)
        for waiting_identity, ticket in admitted:
            self.send(waiting_identity, Admitted(ticket, lim.queued))
        if not admitted and lim.queued != before:
            self.send(identity, QueueLength(lim.queued))


class LimitExceeded(Exception):
    """Refused: answer `refusal.status` (429, or 503 past the queue bound) with Retry-After."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class LimitsClient(DealerClient):
    """An API server's side: `acquire` (awaits a slot or raises LimitExceeded), then `release`.
    `on_queue_length` hears the server-wide queue length with every reply (for /metrics)."""

    def __init__(self, ipc_dir: str) -> None:
        self.on_queue_length: Callable[[int], None] | None = None
        super().__init__("limits", endpoint(ipc_dir), _reply_decoder)

    def heard(self, reply) -> bool:
        if self.on_queue_length is not None:
            self.on_queue_length(reply.queued)
        return not isinstance(reply, (QueueLength, Queued))

    async def acquire(self, key: str, limits: Limits, tokens: int, group: str = "",
                      seqs: int = 1) -> int:
        """A ticket once admitted; LimitExceeded if refused. Cancelling gives the place back.
        `group` is the round-robin group (the tenant); `seqs` the sequences the request runs."""
        ticket, future = self.expect_reply()
        try:
            # NOTE: a Release for a ticket the service never saw is a no-op; one socket keeps order.
            await self.send(Acquire(ticket, key, limits, tokens, group, seqs))
            reply = await future
        except asyncio.CancelledError:
            self.release(ticket, 0)
            raise
        finally:
            self.forget(ticket)
        if isinstance(reply, Refused):
            raise LimitExceeded(Refusal(reply.retry_after, reply.message, reply.status))
        return ticket

    def release(self, ticket: int, used_tokens: int) -> None:
        self.send_now(Release(ticket, used_tokens))

    async def queue_length(self, timeout: float = 1.0) -> int | None:
        """The server-wide queue length now (also handed to `on_queue_length`); None if the
        service does not answer within `timeout` seconds."""
        ticket, future = self.expect_reply()
        try:
            await self.send(QueueQuery(ticket))
            return (await asyncio.wait_for(future, timeout)).queued
        except asyncio.TimeoutError:
            return None
        finally:
            self.forget(ticket)
