"""Continuous-batching scheduler: fills a per-step token budget from running, then waiting requests.

Running requests (decodes and unfinished chunked prefills) go first, oldest first. When the KV
pool runs dry the newest running request is preempted by recompute: its blocks go back to the
pool (cached ones stay matchable) and it rejoins the front of the waiting queue. Waiting requests
are admitted in arrival order while the budget, the sequence cap and the pool allow.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bastion.config.engine import SchedulerConfig
from bastion.engine.kv_cache import BlockManager
from bastion.engine.outputs import FinishReason
from bastion.engine.request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    """One request's share of a step: `num_new_tokens` starting at `start`."""

    request: Request
    start: int
    num_new_tokens: int

    @property
    def completes(self) -> bool:
        """True when this step computes the request's last known token."""
        return self.start + self.num_new_tokens == self.request.num_tokens

    @property
    def samples(self) -> bool:
        """True when a token is sampled after this step (not for a prompt only scored: max_tokens 0)."""
        return self.completes and self.request.params.max_tokens != 0


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    """Decides, each step, which requests compute how many tokens."""

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.config.max_num_batched_tokens)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            assert num_new > 0, req
            while not self.blocks.allocate(req, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    return budget
            out.scheduled.append(ScheduledRequest(req, req.num_computed_tokens, num_new))
            budget -= num_new
            i += 1
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        held_back: list[Request] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            if req.wait_for is not None:
                if not (req.wait_for.prefill_done or req.wait_for.is_finished):
                    held_back.append(self.waiting.popleft())
                    continue
                req.wait_for = None
            # NOTE: cached positions have no logits: a request scoring its prompt computes it all
            cached = [] if req.scores_prompt else self.blocks.find_cached_prefix(req)
            num_cached = len(cached) * self.blocks.block_size
            num_new = min(req.num_tokens - num_cached, budget)
            if not self.blocks.allocate(req, num_new, cached):
                break
            self.waiting.popleft()
            self.blocks.record_lookup(req.num_tokens, num_cached)
            req.num_computed_tokens = num_cached
            if req.num_preemptions == 0:
                req.num_cached_tokens = num_cached
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.scheduled.append(ScheduledRequest(req, num_cached, num_new))
            budget -= num_new
        self.waiting.extendleft(reversed(held_back))

    def _preempt(self, req: Request) -> None:
        self.blocks.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def finish_step(self, out: SchedulerOutput) -> None:
        """Advance counters for the tokens whose KV the step wrote, and publish full blocks."""
        for item in out.scheduled:
            item.request.num_computed_tokens = item.start + item.num_new_tokens
            self.blocks.register_computed(item.request)

    def finish(self, req: Request, reason: FinishReason) -> None:
        """End a request (finished or aborted) and return its blocks at once."""
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req.status is RequestStatus.WAITING:
            self.waiting.remove(req)
        self.blocks.free(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason

    def dump_state(self) -> str:
        """A readable picture of the queues and pool, for error reports."""
        lines = [f"free blocks: {self.blocks.num_free_blocks}/{self.blocks.num_blocks}",
                 f"running ({len(self.running)}):"]
        lines += [f"  {r!r}" for r in self.running]
        lines.append(f"waiting ({len(self.waiting)}):")
        lines += [f"  {r!r}" for r in self.waiting]
        return "\n".join(lines)
