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
