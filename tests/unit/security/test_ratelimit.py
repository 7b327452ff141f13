"""The limiter's bookkeeping with a hand-driven clock: buckets, settlement, concurrency, queue."""
from __future__ import annotations

from manual_clock import ManualClock

from bastion.config.security import Limits
from bastion.security.ratelimit import Limiter, Refusal


def test_requests_per_minute_bucket_refills_continuously():
    clock = ManualClock(1000.0)
    lim = Limiter(clock=clock)
    limits = Limits(requests_per_minute=2)
    assert lim.acquire(1, "k", limits, 0) is True
    assert lim.acquire(2, "k", limits, 0) is True
    refused = lim.acquire(3, "k", limits, 0)
    assert isinstance(refused, Refusal) and refused.retry_after_header == "30"
    assert "2 requests per minute" in refused.message
    assert lim.acquire(4, "other", limits, 0) is True  # principals are separate
    clock.now += 30
    assert lim.acquire(5, "k", limits, 0) is True


def test_tokens_are_reserved_then_settled_to_usage():
    clock = ManualClock(1000.0)
    lim = Limiter(clock=clock)
    limits = Limits(tokens_per_minute=1000)
    assert lim.acquire(1, "k", limits, 800) is True
    refused = lim.acquire(2, "k", limits, 300)
    assert isinstance(refused, Refusal) and refused.retry_after > 0
    lim.release(1, used_tokens=100)  # 700 unused tokens come back
    assert lim.acquire(3, "k", limits, 800) is True
    lim.release(3, used_tokens=0)  # an abort before any work returns all of it
    assert lim.principals["k"].tokens.level == 1000 - 100


def test_a_request_larger_than_the_token_limit_is_refused_with_a_reason():
    refused = Limiter().acquire(1, "k", Limits(tokens_per_minute=100), 101)
    assert isinstance(refused, Refusal) and "lower max_tokens" in refused.message


def test_concurrency_per_principal():
    lim = Limiter()
    limits = Limits(max_concurrent_requests=1)
    assert lim.acquire(1, "k", limits, 0) is True
    refused = lim.acquire(2, "k", limits, 0)
    assert isinstance(refused, Refusal) and "concurrent" in refused.message
    lim.release(1, 0)
    assert lim.acquire(3, "k", limits, 0) is True


def test_global_slots_queue_in_fifo_order_and_refuse_beyond_the_bound():
    lim = Limiter(max_concurrent=1, max_waiting=2)
    free = Limits()
    assert lim.acquire("a", "k1", free, 0) is True
    assert lim.acquire("b", "k2", free, 0) is False
    assert lim.acquire("c", "k3", free, 0) is False
    refused = lim.acquire("d", "k4", free, 0)
    assert isinstance(refused, Refusal) and "--max-concurrent-requests 1" in refused.message
    assert lim.release("a", 0) == ["b"]
    assert lim.release("c", 0) == []  # a waiting request that gives up leaves the queue
    assert lim.release("b", 0) == []
    assert lim.running == 0 and not lim.waiting and not lim.tickets


def test_limits_follow_a_reload():
    clock = ManualClock(1000.0)
    lim = Limiter(clock=clock)
    assert lim.acquire(1, "k", Limits(requests_per_minute=1), 0) is True
    assert isinstance(lim.acquire(2, "k", Limits(requests_per_minute=1), 0), Refusal)
    lim.release(1, 0)
    clock.now += 60
    assert lim.acquire(3, "k", Limits(), 0) is True  # limit lifted


def test_engine_slots_queue_and_the_queue_bound_refuses_with_503():
    lim = Limiter(max_seqs=2, max_queued=1)
    free = Limits()
    assert lim.acquire("a", "k", free, 0) is True
    assert lim.acquire("b", "k", free, 0, seqs=4) is False  # wants 2 slots (clamped): waits
    refused = lim.acquire("c", "k", free, 0)
    assert isinstance(refused, Refusal) and refused.status == 503
    assert "1 requests are queued (--max-queued-requests 1)" in refused.message
    assert lim.queued == 1
    assert lim.release("a", 0) == ["b"]
    assert lim.seats_used == 2 and lim.queued == 0
    assert lim.acquire("d", "k", free, 0) is False  # no slot left: queued, not refused
    assert lim.release("b", 0) == ["d"]
    lim.release("d", 0)
    assert lim.running == 0 and lim.seats_used == 0 and not lim.tickets


def test_a_zero_queue_bound_refuses_whatever_cannot_run_now():
    lim = Limiter(max_seqs=1, max_queued=0)
    assert lim.acquire("a", "k", Limits(), 0) is True
    assert lim.acquire("b", "k", Limits(), 0).status == 503


def test_waiting_requests_are_admitted_round_robin_by_group():
    lim = Limiter(max_seqs=1)
    free = Limits()
    assert lim.acquire("run", "flood", free, 0, group="t1") is True
    for i in range(5):
        assert lim.acquire(f"f{i}", "flood", free, 0, group="t1") is False
    assert lim.acquire("o1", "other", free, 0, group="t2") is False
    assert lim.acquire("o2", "other", free, 0, group="t2") is False
    order = []
    done = "run"
    while lim.tickets:
        admitted = lim.release(done, 0)
        if not admitted:
            break
        order += admitted
        done = admitted[0]
    # the other tenant waits behind at most one of the flood's requests per turn
    assert order == ["f0", "o1", "f1", "o2", "f2", "f3", "f4"]


def test_a_waiting_request_that_gives_up_keeps_the_turn_order():
    lim = Limiter(max_seqs=1)
    free = Limits()
    lim.acquire("run", "a", free, 0, group="A")
    lim.acquire("a1", "a", free, 0, group="A")
    lim.acquire("b1", "b", free, 0, group="B")
    lim.acquire("c1", "c", free, 0, group="C")
    assert lim.release("b1", 0) == []  # gave up while waiting
    assert lim.queued == 2
    assert lim.release("run", 0) == ["a1"]
    assert lim.release("a1", 0) == ["c1"]


def test_per_principal_waiting_cap_refuses_with_429_and_spares_others():
    lim = Limiter(max_seqs=1)
    capped = Limits(max_waiting_requests=2)
    assert lim.acquire("run", "k", capped, 0) is True
    assert lim.acquire("w1", "k", capped, 0) is False
    assert lim.acquire("w2", "k", capped, 0) is False
    refused = lim.acquire("w3", "k", capped, 0)
    assert isinstance(refused, Refusal) and refused.status == 429
    assert "2 waiting at a time" in refused.message
    assert lim.acquire("x1", "other", capped, 0) is False  # another principal still queues
    assert lim.release("run", 0) == ["w1"]
    assert lim.acquire("w4", "k", capped, 0) is False  # a place freed up


def test_the_concurrency_bound_and_the_engine_slots_both_hold():
    lim = Limiter(max_concurrent=2, max_waiting=1, max_seqs=3)
    free = Limits()
    assert lim.acquire("a", "k", free, 0, seqs=2) is True
    assert lim.acquire("b", "k", free, 0, seqs=2) is False  # 4 sequences > 3 slots
    refused = lim.acquire("c", "k", free, 0)
    assert refused.status == 429 and "--max-concurrent-requests 2" in refused.message
