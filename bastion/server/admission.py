"""Admission: what admitting one request took from its caller, given back once when it ends."""
from __future__ import annotations

from typing import Callable

from bastion.security.audit import RequestRecord
from bastion.security.shared_limits import LimitsClient


class Admission:
    """What admitting one request took from its caller: a limits ticket (None without shared
    limits) and its audit record. The request has `parts` generations (a batch's prompts); each
    settles its part once, when it ends, and the ticket goes back with the last."""

    def __init__(self, limits: LimitsClient | None, ticket: int | None,
                 record: RequestRecord | None, parts: int = 1) -> None:
        self.limits, self.ticket, self.record = limits, ticket, record
        self.pending, self.used_tokens = parts, 0

    def part(self) -> Callable[[int, int], None]:
        """The settle call of one generation: only its first call counts."""
        settled = False

        def settle(prompt_tokens: int, completion_tokens: int) -> None:
            nonlocal settled
            if not settled:
                settled = True
                self.settle(prompt_tokens, completion_tokens)
        return settle

    def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """One part ended: add its counts to the audit record; the last part gives back the
        limits with the tokens all parts used."""
        if self.pending <= 0:
            return
        self.pending -= 1
        self.used_tokens += prompt_tokens + completion_tokens
        if self.record is not None:
            self.record.prompt_tokens = (self.record.prompt_tokens or 0) + prompt_tokens
            self.record.completion_tokens = (self.record.completion_tokens or 0) + completion_tokens
        if self.pending == 0:
            self._release()

    def abandon(self) -> None:
        """The parts never started (a batch cut short) will not settle: give the ticket back now."""
        if self.pending > 0:
            self.pending = 0
            self._release()

    def _release(self) -> None:
        if self.ticket is not None:
            ticket, self.ticket = self.ticket, None
            self.limits.release(ticket, self.used_tokens)
