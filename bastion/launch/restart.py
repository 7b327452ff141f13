"""When to restart a dead rank: exponential backoff, and a cap on restarts within a window.

The n-th restart within the window waits `base * 2**(n-1)` seconds (1 s, 2 s, 4 s, ... capped
at 60 s); a rank that has not needed a restart for a whole window starts again at 1 s. More
than `max_restarts` restarts within the window and the rank is given up (failed).
"""
from __future__ import annotations

import collections
import time
from typing import Callable

from bastion.transport.rank_state import RankState

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0


class RestartPolicy:
    """Restart bookkeeping for one rank."""

    def __init__(self, max_restarts: int, window_s: float, clock: Callable[[], float] = time.monotonic,
                 base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> None:
        self.max_restarts, self.window_s = max_restarts, window_s
        self.base_s, self.cap_s, self.clock = base_s, cap_s, clock
        self.restarts: collections.deque[float] = collections.deque()
        self.total = 0

    def next_delay(self) -> float | None:
        """The rank just died (or failed to start): seconds to wait before restarting it, or
        None when it has used up its restarts within the window."""
        now = self.clock()
        while self.restarts and now - self.restarts[0] > self.window_s:
            self.restarts.popleft()
        if len(self.restarts) >= self.max_restarts:
            return None
        delay = min(self.cap_s, self.base_s * 2 ** len(self.restarts))
        self.restarts.append(now)
        self.total += 1
        return delay


def after_loss(policy: RestartPolicy, now: float) -> tuple[RankState, float | None]:
    """A rank was lost (its process exited, its actor or node died, it failed to start or was
    stopped as unhealthy): what comes next, (RESTARTING, when to start it again) or (FAILED,
    None) once it has used up its restarts. The one decision every kind of rank makes."""
    delay = policy.next_delay()
    if delay is None:
        return RankState.FAILED, None
    return RankState.RESTARTING, now + delay
