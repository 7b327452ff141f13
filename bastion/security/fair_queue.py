"""The waiting line in front of the engines: one queue per group (a tenant), served round-robin.

A flood from one group fills only that group's queue; each time a slot frees, the next group in
turn gets it, so any other group's request waits behind at most one of the flood's per turn.
Pure bookkeeping, used by the `Limiter`.
"""
from __future__ import annotations

import collections
from typing import Hashable


class FairQueue:
    """Waiting tickets by group; `pop` takes from the group whose turn it is (round-robin)."""

    def __init__(self) -> None:
        self._groups: collections.OrderedDict[str, collections.deque[Hashable]] = collections.OrderedDict()
        self._group_of: dict[Hashable, str] = {}

    def __len__(self) -> int:
        return len(self._group_of)

    def __bool__(self) -> bool:
        return bool(self._group_of)

    def __contains__(self, ticket_id: Hashable) -> bool:
        return ticket_id in self._group_of

    def append(self, ticket_id: Hashable, group: str) -> None:
        """Queue at the back of its group; a new group joins at the end of the turn order."""
        self._groups.setdefault(group, collections.deque()).append(ticket_id)
        self._group_of[ticket_id] = group

    def peek(self) -> Hashable:
        """The ticket whose turn it is (the head of the first group in turn order)."""
        return next(iter(self._groups.values()))[0]

    def pop(self) -> Hashable:
        """Take the ticket whose turn it is; its group moves to the end of the turn order."""
        group, line = next(iter(self._groups.items()))
        ticket_id = line.popleft()
        del self._group_of[ticket_id]
        del self._groups[group]
        if line:
            self._groups[group] = line
        return ticket_id

    def remove(self, ticket_id: Hashable) -> None:
        """A waiting request that gave up leaves its group's queue (the turn order stays)."""
        group = self._group_of.pop(ticket_id)
        line = self._groups[group]
        line.remove(ticket_id)
        if not line:
            del self._groups[group]
