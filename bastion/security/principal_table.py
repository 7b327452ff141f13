"""The limiter's per-principal state, bounded: at most `cap` principals, least recently used
forgotten first, and only when forgetting changes nothing.

A principal's state is its buckets (what it may still use this minute) and its counts of
requests in flight and waiting. A principal forgotten and met again starts fresh: full buckets,
nothing in flight. That is exactly its state once it has *settled*: no request in flight or
waiting, and every bucket refilled to capacity (at most a minute after its last request). So a
settled principal is forgotten with no effect on any limit, and an unsettled one never is:
pruning can neither lift a limit (a bucket restarting full early) nor lose a ticket.

When the table is full and nothing in it has settled (more than `cap` distinct principals used
the server within the last minute or so, or hold requests), a principal the table does not know
is refused (the limiter answers 503 with Retry-After) until one settles; principals already
tracked are served as before. A flood of new subjects thus neither pushes out the state of the
principals it competes with nor grows memory past the cap.

Finding room is bounded work: a new principal looks at no more than SCAN_STEPS of the least
recently used entries, forgetting the settled ones and moving the others to the back, so the
next look sees different ones.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Generic, Iterator, Protocol, TypeVar

SCAN_STEPS = 32


class Settling(Protocol):
    def settles_in(self, now: float) -> float:
        """0 when forgetting it now changes nothing; else the seconds until it may (math.inf
        while it has requests in flight or waiting)."""


S = TypeVar("S", bound=Settling)


class PrincipalTable(Generic[S]):
    """Principal key -> state, in least-recently-used order, at most `cap` entries."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"the principal cap must be at least 1, got {cap}")
        self.cap = cap
        self._states: OrderedDict[str, S] = OrderedDict()
        self.forgotten = 0  # settled principals pruned so far

    def use(self, key: str) -> S | None:
        """Its state, now the most recently used; None if not tracked."""
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
        return state

    def make_room(self, now: float) -> float:
        """0 when a new principal fits (forgetting settled ones if the table is full); else
        the seconds until one of those looked at may settle (at least a second if none will
        soon: they all hold requests)."""
        steps = 0
        soonest = math.inf
        while len(self._states) >= self.cap and steps < min(SCAN_STEPS, len(self._states)):
            key, state = next(iter(self._states.items()))
            wait = state.settles_in(now)
            if wait <= 0:
                del self._states[key]
                self.forgotten += 1
            else:
                self._states.move_to_end(key)
                soonest = min(soonest, wait)
            steps += 1
        if len(self._states) < self.cap:
            return 0.0
        return soonest if soonest < math.inf else 1.0

    def add(self, key: str, state: S) -> None:
        """Track a new principal (after `make_room` said it fits)."""
        self._states[key] = state

    def __getitem__(self, key: str) -> S:
        return self._states[key]

    def __contains__(self, key: str) -> bool:
        return key in self._states

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)
