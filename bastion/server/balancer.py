"""Which data-parallel rank gets a request: least outstanding work, round-robin on ties,
prefix affinity within a load bound. Pure Python; the engine client feeds it load.
"""
from __future__ import annotations

import collections
import hashlib

AFFINITY_PREFIX_TOKENS = 64
MIN_AFFINITY_TOKENS = 32
MAX_AFFINITY_ENTRIES = 65536


class RankBalancer:
    """Tracks each rank's outstanding tokens and picks the rank for the next request.

    A rank's score is the outstanding work (running + waiting tokens) it last published plus
    the tokens this front end sent it since. A prompt whose first tokens were seen before goes
    back to the rank that served them (its prefix cache holds them) unless that rank's score is
    more than `affinity_tokens` above the least loaded rank.
    """

    def __init__(self, num_ranks: int, affinity_tokens: int = 2048) -> None:
        self.published = [0] * num_ranks
        self.sent = [0] * num_ranks
        self.waiting = [0] * num_ranks
        self.sent_requests = [0] * num_ranks
        self.alive = [True] * num_ranks
        self.affinity_tokens = affinity_tokens
        self._next = 0
        self._affinity: collections.OrderedDict[bytes, int] = collections.OrderedDict()

    def score(self, rank: int) -> int:
        return self.published[rank] + self.sent[rank]

    def on_load(self, rank: int, outstanding_tokens: int, num_waiting: int) -> None:
        """A rank published its load; it covers everything sent to it before."""
        self.published[rank], self.waiting[rank] = outstanding_tokens, num_waiting
        self.sent[rank] = self.sent_requests[rank] = 0

    def revive(self, rank: int) -> None:
        """A restarted rank: alive again, with nothing outstanding."""
        self.alive[rank] = True
        self.published[rank] = self.waiting[rank] = self.sent[rank] = self.sent_requests[rank] = 0

    def queued(self) -> int:
        """Requests waiting on live ranks (as published, plus those sent since)."""
        return sum(self.waiting[r] + self.sent_requests[r] for r in range(len(self.alive)) if self.alive[r])

    def choose(self, prompt_ids: list[int], salt: str | None = None, among: set[int] | None = None,
               work: int | None = None) -> int | None:
        """The rank for this prompt (None when no rank is alive); records the send. `among`: only
        these ranks (a role's, in disaggregated serving); `work`: the tokens it adds there
        (default: the prompt's)."""
        live = [r for r, ok in enumerate(self.alive) if ok and (among is None or r in among)]
        if not live:
            return None
        best = min(self.score(r) for r in live)
        key = _prefix_key(prompt_ids, salt, among)
        rank = self._affinity.get(key) if key is not None else None
        if rank not in live or self.score(rank) > best + self.affinity_tokens:
            rank = self._round_robin([r for r in live if self.score(r) == best])
        if key is not None:
            self._affinity[key] = rank
            self._affinity.move_to_end(key)
            if len(self._affinity) > MAX_AFFINITY_ENTRIES:
                self._affinity.popitem(last=False)
        self.sent[rank] += len(prompt_ids) if work is None else work
        self.sent_requests[rank] += 1
        return rank

    def _round_robin(self, tied: list[int]) -> int:
        n = len(self.alive)
        for step in range(n):
            rank = (self._next + step) % n
            if rank in tied:
                self._next = (rank + 1) % n
                return rank
        raise AssertionError("no tied rank")


def _prefix_key(prompt_ids: list[int], salt: str | None, among: set[int] | None = None) -> bytes | None:
    """The affinity key of a prompt's beginning; one per set of candidate ranks (a prompt's
    prefill rank and its decode rank are remembered apart)."""
    if len(prompt_ids) < MIN_AFFINITY_TOKENS:
        return None
    digest = hashlib.blake2b(digest_size=16)
    digest.update((salt or "").encode())
    if among is not None:
        digest.update(b"\1" + ",".join(map(str, sorted(among))).encode())
    digest.update(b"\0" + ",".join(map(str, prompt_ids[:AFFINITY_PREFIX_TOKENS])).encode())
    return digest.digest()
