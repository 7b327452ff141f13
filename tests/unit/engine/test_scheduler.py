"""Scheduler arithmetic without a model: budgets, chunked prefill, preemption, no leaks."""
from __future__ import annotations

from bastion.config.engine import SchedulerConfig
from bastion.engine.kv_cache import BlockManager
from bastion.engine.outputs import FinishReason
from bastion.engine.request import Request
from bastion.engine.scheduler import Scheduler
from bastion.sampling_params import SamplingParams


def make(rid: str, n_prompt: int, max_tokens: int, start: int = 0) -> Request:
    return Request(rid, list(range(start, start + n_prompt)), SamplingParams(max_tokens=max_tokens),
                   frozenset(), 10_000)


def run_step(sched: Scheduler, token: int = 7):
    """One engine step with a stand-in sampler that always picks `token`."""
    out = sched.schedule()
    sched.finish_step(out)
    for item in out.scheduled:
        if item.samples:
            reason = item.request.append_token(token)
            if reason is not None:
                sched.finish(item.request, reason)
    return out


def test_decodes_go_first_and_prefill_is_chunked_to_the_budget():
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=8, max_num_seqs=4), BlockManager(64, 4))
    long = make("long", 20, 2)
    sched.add(long)
    steps = [[(s.request.request_id, s.num_new_tokens) for s in run_step(sched).scheduled]
             for _ in range(3)]
    assert steps == [[("long", 8)], [("long", 8)], [("long", 4)]]
    assert long.num_output_tokens == 1                 # sampled only when the prompt completed
    sched.add(make("short", 3, 2, start=100))
    assert [(s.request.request_id, s.num_new_tokens) for s in run_step(sched).scheduled] == [
        ("long", 1), ("short", 3)]


def test_sequence_cap_limits_running_requests():
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=2), BlockManager(64, 4))
    for i in range(3):
        sched.add(make(f"r{i}", 4, 3, start=10 * i))
    out = run_step(sched)
    assert [s.request.request_id for s in out.scheduled] == ["r0", "r1"]
    assert len(sched.waiting) == 1


def test_newest_request_is_preempted_and_everything_finishes_without_leaks():
    bm = BlockManager(6, 4)                             # 24 token slots
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=4), bm)
    reqs = [make(f"r{i}", 6, 8, start=20 * i) for i in range(3)]
    for r in reqs:
        sched.add(r)
    preempted = []
    for _ in range(200):
        if not sched.has_unfinished:
            break
        preempted += [r.request_id for r in run_step(sched).preempted]
    assert not sched.has_unfinished
    assert preempted and preempted[0] == "r2"           # the latest arrival goes first
    assert all(r.finish_reason is FinishReason.LENGTH and r.num_output_tokens == 8 for r in reqs)
    assert bm.num_free_blocks == 6 and all(b.ref_count == 0 for b in bm.blocks)


def test_abort_returns_blocks_at_once():
    bm = BlockManager(16, 4)
    sched = Scheduler(SchedulerConfig(), bm)
    a, b = make("a", 10, 50), make("b", 10, 50, start=100)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    assert bm.num_free_blocks == 16 - 6
    sched.finish(a, FinishReason.ABORT)
    assert bm.num_free_blocks == 16 - 3
    sched.finish(b, FinishReason.ABORT)
    assert bm.num_free_blocks == 16 and not sched.has_unfinished


def test_waiting_request_can_be_aborted():
    bm = BlockManager(16, 4)
    sched = Scheduler(SchedulerConfig(), bm)
    a = make("a", 10, 5)
    sched.add(a)
    sched.finish(a, FinishReason.ABORT)
    assert not sched.has_unfinished and a.finish_reason is FinishReason.ABORT


def test_prefix_hit_skips_computed_tokens():
    bm = BlockManager(32, 4)
    sched = Scheduler(SchedulerConfig(), bm)
    first = make("first", 13, 1)
    sched.add(first)
    run_step(sched)
    second = make("second", 13, 1)
    sched.add(second)
    out = run_step(sched)
    assert [(s.start, s.num_new_tokens) for s in out.scheduled] == [(12, 1)]
    assert second.num_cached_tokens == 12 and bm.hit_tokens == 12
