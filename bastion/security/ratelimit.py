"""Rate limits and concurrency, as pure bookkeeping (one instance serves a whole server).

Per principal: requests per minute and tokens per minute as token buckets (a full minute's
worth of burst, refilled continuously), and concurrent requests. Tokens are reserved at
admission (prompt plus the most the request may generate), settled to actual usage at the
end, and the unused part returned on abort; and, optionally, how many may wait at once.

Globally: a request runs when it fits (at most `max_concurrent` requests, and at most `max_seqs`
sequences: the engines' slots, ranks x --max-num-seqs, a request of `n` sequences taking `n`);
otherwise it waits. Waiting requests are admitted round-robin by group (the tenant), FIFO within a
group, each when it fits; one that does not fit blocks no one and is not starved (slots are held
for one of them at a time: `FairQueue`). "Queued" means exactly that: admitted by the API servers,
not finished, and waiting for a slot. Past `max_queued` queued requests a request is refused with
503 (the server is overloaded, --max-queued-requests); past `max_waiting` (--max-waiting-requests,
with --max-concurrent-requests) or its principal's `max_waiting_requests`, with 429.

Per-principal state is bounded (`PrincipalTable`, --max-tracked-principals): principals that
have settled (nothing in flight, buckets full again) are forgotten least recently used first,
which changes no limit; when none has, a new principal gets 503 until one does.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

from bastion.config.security import DEFAULT_MAX_TRACKED_PRINCIPALS, Limits
from bastion.security.fair_queue import FairQueue

QUEUE_FULL_RETRY_AFTER = 1.0
SCAN_STEPS = 32  # records a new principal looks at, at most, to find room


@dataclass
class Refusal:
    """Over a limit: answer 429 with Retry-After (seconds, rounded up) and this message."""

    retry_after: float
    message: str
    status: int = 429

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


class Bucket:
    """`per_minute` units, refilled continuously, at most one minute's worth banked."""

    __slots__ = ("capacity", "level", "updated")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self.updated = now

    def resize(self, per_minute: int) -> None:
        self.level = min(self.level, per_minute)
        self.capacity = float(per_minute)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def wait_for(self, amount: int) -> float:
        """Seconds until `amount` is available (0 when it is now)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def full_in(self, now: float) -> float:
        """Seconds until it is full again (0 when it is), without touching it."""
        missing = self.capacity - self.level - (now - self.updated) * self.capacity / 60.0
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity


@dataclass(slots=True)
class PrincipalState:
    limits: Limits
    requests: Bucket | None = None
    tokens: Bucket | None = None
    active: int = 0  # NOTE: its requests admitted and not released, waiting ones included
    waiting: int = 0

    def settles_in(self, now: float) -> float:
        """0 when forgetting it changes nothing (idle, buckets full); see `PrincipalTable`."""
        if self.active or self.waiting:
            return math.inf
        return max((b.full_in(now) for b in (self.requests, self.tokens) if b is not None), default=0.0)


class PrincipalTable(OrderedDict[str, PrincipalState]):
    """Principal key -> PrincipalState, least recently used first, at most `cap` of them.

    Only a *settled* principal is forgotten (nothing in flight or waiting, buckets full again):
    met again, it starts fresh, which is where it stood, so forgetting lifts no limit and loses
    no ticket. When none has settled a new principal does not fit (503) and the tracked ones
    are served as before. Finding room looks at SCAN_STEPS records at most, forgetting settled
    ones and moving the others to the back (docs/security.md has the reasoning)."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"the principal cap must be at least 1, got {cap}")
        super().__init__()
        self.cap = cap
        self.forgotten = 0  # settled principals pruned so far

    def use(self, key: str) -> PrincipalState | None:
        """Its state, now the most recently used; None if not tracked."""
        state = self.get(key)
        if state is not None:
            self.move_to_end(key)
        return state

    def make_room(self, now: float) -> float:
        """0 when a new principal fits (forgetting settled ones if full); else the seconds until
        one of those looked at may settle (1 if all of them hold requests)."""
        soonest = math.inf
        for _ in range(min(SCAN_STEPS, len(self))):
            if len(self) < self.cap:
                break
            key, state = next(iter(self.items()))
            wait = state.settles_in(now)
            if wait <= 0:
                del self[key]
                self.forgotten += 1
            else:
                self.move_to_end(key)
                soonest = min(soonest, wait)
        if len(self) < self.cap:
            return 0.0
        return soonest if soonest < math.inf else 1.0


@dataclass
class Ticket:
    """An admitted or waiting request: who, how many tokens it reserved, how many sequence
    slots it takes."""

    key: str
    reserved: int
    seats: int = 1
    granted: bool = False


class Limiter:
    """Admission bookkeeping; every method is quick and never blocks (the caller queues)."""

    def __init__(self, max_concurrent: int | None = None, max_waiting: int | None = None,
                 clock: Callable[[], float] = time.monotonic, max_seqs: int | None = None,
                 max_queued: int | None = None,
                 max_principals: int = DEFAULT_MAX_TRACKED_PRINCIPALS) -> None:
        self.max_concurrent, self.max_seqs, self.max_queued = max_concurrent, max_seqs, max_queued
        self.max_waiting = (max_concurrent or 0) if max_waiting is None else max_waiting
        self.clock = clock
        self.principals = PrincipalTable(max_principals)
        self.tickets: dict[Hashable, Ticket] = {}
        self.waiting = FairQueue()
        self.running = 0
        self.seats_used = 0  # NOTE: running requests' slots and those held for the queue's reserver

    def acquire(self, ticket_id: Hashable, key: str, limits: Limits, tokens: int,
                group: str | None = None, seqs: int = 1) -> Refusal | bool:
        """Admit (True), queue (False: a later `release` admits it), or refuse. `group` is the
        round-robin group (the tenant; default the key); `seqs` the sequences it will run."""
        state = self._state(key, limits)
        if isinstance(state, Refusal):
            return state
        refusal = self._check(state, limits, tokens)
        if refusal is not None:
            return refusal
        seats = min(seqs, self.max_seqs) if self.max_seqs is not None else seqs
        if self.waiting or not self._fits(seats):
            refusal = self._check_queue(state, limits)
            if refusal is not None:
                return refusal
            self._reserve(state, tokens)
            state.waiting += 1
            self.tickets[ticket_id] = Ticket(key, tokens, seats)
            self.waiting.append(ticket_id, group if group is not None else key, seats)
            self._admit_waiting()  # NOTE: at most holds free slots for it (FairQueue.serve)
            return False
        self._reserve(state, tokens)
        self.tickets[ticket_id] = Ticket(key, tokens, seats, granted=True)
        self.running += 1
        self.seats_used += seats
        return True

    def release(self, ticket_id: Hashable, used_tokens: int) -> list[Hashable]:
        """End a request (finished, failed, aborted or cancelled while waiting); returns the
        waiting tickets this admits."""
        ticket = self.tickets.pop(ticket_id, None)
        if ticket is None:
            return []
        state = self.principals.use(ticket.key)  # NOTE: never forgotten while it holds a ticket
        state.active -= 1
        if state.tokens is not None:
            state.tokens.refill(self.clock())
            state.tokens.give(max(0, ticket.reserved - used_tokens))
        if ticket.granted:
            self.running -= 1
            self.seats_used -= ticket.seats
        else:
            state.waiting -= 1
            self.seats_used -= self.waiting.remove(ticket_id)
        return self._admit_waiting()

    def _admit_waiting(self) -> list[Hashable]:
        free = None if self.max_seqs is None else self.max_seqs - self.seats_used
        may_start = None if self.max_concurrent is None else self.max_concurrent - self.running
        admitted, taken = self.waiting.serve(free, may_start)
        self.seats_used += taken
        for ticket_id in admitted:
            ticket = self.tickets[ticket_id]
            self.principals[ticket.key].waiting -= 1
            ticket.granted = True
            self.running += 1
        return admitted

    @property
    def queued(self) -> int:
        """Requests admitted and waiting for a slot."""
        return len(self.waiting)

    def _fits(self, seats: int) -> bool:
        return (self.max_concurrent is None or self.running < self.max_concurrent) and \
            (self.max_seqs is None or self.seats_used + seats <= self.max_seqs)

    def _check_queue(self, state: PrincipalState, limits: Limits) -> Refusal | None:
        """Refused instead of queued: the principal's waiting cap (429), the queue bound (503),
        the waiting bound of --max-concurrent-requests (429)."""
        cap = limits.max_waiting_requests
        if cap is not None and state.waiting >= cap:
            return Refusal(QUEUE_FULL_RETRY_AFTER, f"too many waiting requests: the limit is {cap} "
                                                   "waiting at a time")
        if self.max_queued is not None and len(self.waiting) >= self.max_queued:
            return Refusal(QUEUE_FULL_RETRY_AFTER, f"the server is overloaded: {len(self.waiting)} "
                           f"requests are queued (--max-queued-requests {self.max_queued}); retry "
                           "later", status=503)
        if self.max_concurrent is not None and len(self.waiting) >= self.max_waiting:
            return Refusal(QUEUE_FULL_RETRY_AFTER, f"the server is at --max-concurrent-requests "
                           f"{self.max_concurrent} with {len(self.waiting)} waiting; retry later")
        return None

    def _state(self, key: str, limits: Limits) -> PrincipalState | Refusal:
        now = self.clock()
        state = self.principals.use(key)
        if state is None:
            wait = self.principals.make_room(now)
            if wait:
                cap = self.principals.cap
                return Refusal(wait, f"the server is overloaded: it tracks the limits of {cap} "
                               f"callers (--max-tracked-principals {cap}) and none has been idle "
                               "long enough to forget; retry later", status=503)
            state = self.principals[key] = PrincipalState(limits)
        state.limits = limits
        state.requests = _bucket(state.requests, limits.requests_per_minute, now)
        state.tokens = _bucket(state.tokens, limits.tokens_per_minute, now)
        return state

    @staticmethod
    def _check(state: PrincipalState, limits: Limits, tokens: int) -> Refusal | None:
        if limits.max_concurrent_requests is not None and state.active >= limits.max_concurrent_requests:
            return Refusal(1.0, f"too many concurrent requests: the limit is "
                                f"{limits.max_concurrent_requests} at a time")
        if state.requests is not None and state.requests.wait_for(1) > 0:
            return Refusal(state.requests.wait_for(1), f"rate limit reached: "
                           f"{limits.requests_per_minute} requests per minute")
        if state.tokens is not None:
            if tokens > state.tokens.capacity:
                return Refusal(60.0, f"this request may use {tokens} tokens (prompt plus max_tokens), "
                                     f"more than the limit of {limits.tokens_per_minute} tokens per "
                                     "minute; lower max_tokens")
            if state.tokens.wait_for(tokens) > 0:
                return Refusal(state.tokens.wait_for(tokens), f"rate limit reached: "
                               f"{limits.tokens_per_minute} tokens per minute")
        return None

    @staticmethod
    def _reserve(state: PrincipalState, tokens: int) -> None:
        state.active += 1
        if state.requests is not None:
            state.requests.level -= 1
        if state.tokens is not None:
            state.tokens.level -= tokens


def _bucket(bucket: Bucket | None, per_minute: int | None, now: float) -> Bucket | None:
    if per_minute is None:
        return None
    if bucket is None:
        return Bucket(per_minute, now)
    if bucket.capacity != per_minute:
        bucket.resize(per_minute)
    bucket.refill(now)
    return bucket
