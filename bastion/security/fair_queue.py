"""The waiting line in front of the engines: one queue per group (a tenant), served round-robin.

A flood from one group fills only that group's queue; each time slots free, the groups get
their turns in order, so any other group's request waits behind at most one of the flood's per
turn. On its group's turn a head that fits runs, whatever waits ahead of it: a head that needs
more slots than are free holds up no one. The first such head becomes the *reserver*: the slots
its group's turns free are held for it until it has all it needs, then it runs, so a stream of
small requests cannot starve it. Other heads that do not fit are passed over (keeping their
place in the turn order) until it runs: one reserver at a time, since two holding part of what
each needs could wait for each other forever. A turn is used only when its head gets something.
Pure bookkeeping, used by the `Limiter`.
"""
from __future__ import annotations

import collections
from typing import Hashable, Iterator


class FairQueue:
    """Waiting tickets by group, FIFO within a group; groups in turn order (round-robin); the
    slots held for the reserver."""

    def __init__(self) -> None:
        self._groups: collections.OrderedDict[str, collections.deque[Hashable]] = collections.OrderedDict()
        self._group_of: dict[Hashable, str] = {}
        self._seats: dict[Hashable, int] = {}
        self.reserver: Hashable | None = None  # the waiting ticket that slots are held for
        self.held = 0  # slots held for it

    def __len__(self) -> int:
        return len(self._group_of)

    def __bool__(self) -> bool:
        return bool(self._group_of)

    def __contains__(self, ticket_id: Hashable) -> bool:
        return ticket_id in self._group_of

    def append(self, ticket_id: Hashable, group: str, seats: int = 1) -> None:
        """Queue at the back of its group; a new group joins at the end of the turn order."""
        self._groups.setdefault(group, collections.deque()).append(ticket_id)
        self._group_of[ticket_id] = group
        self._seats[ticket_id] = seats

    def remove(self, ticket_id: Hashable) -> int:
        """A waiting request that gave up leaves its group's queue (the turn order stays); the
        slots that were held for it, now free."""
        group = self._group_of.pop(ticket_id)
        del self._seats[ticket_id]
        line = self._groups[group]
        line.remove(ticket_id)
        if not line:
            del self._groups[group]
        if ticket_id != self.reserver:
            return 0
        freed, self.reserver, self.held = self.held, None, 0
        return freed

    def serve(self, free: int | None, may_start: int | None) -> tuple[list[Hashable], int]:
        """Hand out `free` slots (None: no bound) to at most `may_start` requests (None: no
        bound), turn by turn; returns the tickets admitted and the slots taken (theirs, and
        those newly held for the reserver). It stops when nothing can move: then, if anything
        waits, every slot is taken or no request may start."""
        admitted: list[Hashable] = []
        taken = 0
        moved = True
        while moved and self and (may_start is None or len(admitted) < may_start) and \
                (free is None or taken < free):
            moved = False
            left = None if free is None else free - taken
            for group, ticket_id in self._heads():
                need = self._seats[ticket_id] - (self.held if ticket_id == self.reserver else 0)
                if ticket_id != self.reserver and (left is None or need <= left):
                    taken += need
                elif left is not None and (ticket_id == self.reserver or self.reserver is None):
                    self.reserver = ticket_id
                    taken += min(left, need)
                    self.held += min(left, need)
                    if need > left:
                        self._groups.move_to_end(group)  # its turn is used: slots held
                        moved = True
                        break
                    self.reserver, self.held = None, 0
                else:
                    continue  # a second big head: it waits until the reserver runs
                admitted.append(self._pop_from(group))
                moved = True
                break  # NOTE: the turn order changed; start again from the group whose turn it is
        return admitted, taken

    def _heads(self) -> Iterator[tuple[str, Hashable]]:
        for group, line in self._groups.items():
            yield group, line[0]

    def _pop_from(self, group: str) -> Hashable:
        """Take `group`'s head: its turn is used, the group moves to the end of the turn order."""
        line = self._groups.pop(group)
        ticket_id = line.popleft()
        del self._group_of[ticket_id]
        del self._seats[ticket_id]
        if line:
            self._groups[group] = line
        return ticket_id
