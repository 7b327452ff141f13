"""The limiter's per-principal state stays bounded under a flood of distinct subjects, forgets
only principals whose forgetting changes nothing, and keeps enforcing the active ones' limits."""
from __future__ import annotations

import tracemalloc

from manual_clock import ManualClock

from bastion.config.security import Limits
from bastion.security.ratelimit import Limiter, Refusal

FLOOD = 100_000
CAP = 5_000


def test_a_flood_of_distinct_subjects_keeps_the_state_bounded_and_the_limits_enforced():
    clock = ManualClock(1000.0)
    lim = Limiter(clock=clock, max_principals=CAP)
    flood = Limits(requests_per_minute=60, tokens_per_minute=6_000)  # settled 1 s after a request
    heavy = Limits(requests_per_minute=10)
    holder = Limits(max_concurrent_requests=1)
    assert lim.acquire("held", "holder", holder, 0) is True  # in flight through the whole flood
    heavy_admitted = heavy_refused = 0
    tracemalloc.start()
    try:
        for i in range(FLOOD):
            clock.now += 0.001  # 1,000 new subjects a second
            assert lim.acquire(("f", i), f"sub-{i}", flood, 100) is True
            lim.release(("f", i), used_tokens=50)
            if i % 100 == 0:  # the heavy caller asks 10 times a second, over its 10 a minute
                answer = lim.acquire(("h", i), "heavy", heavy, 0)
                if answer is True:
                    heavy_admitted += 1
                    lim.release(("h", i), 0)
                else:
                    assert isinstance(answer, Refusal) and "10 requests per minute" in answer.message
                    heavy_refused += 1
                refused = lim.acquire(("x", i), "holder", holder, 0)
                assert isinstance(refused, Refusal) and "concurrent" in refused.message
            assert len(lim.principals) <= CAP
            if i == 2 * CAP:
                settled_memory = tracemalloc.get_traced_memory()[0]
        final_memory = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    minutes = FLOOD * 0.001 / 60
    assert heavy_admitted <= 10 + 10 * minutes + 1  # a full bucket, then 10 a minute: never reset
    assert heavy_refused > heavy_admitted
    assert lim.principals.forgotten >= FLOOD - CAP
    assert final_memory - settled_memory < 200_000  # bytes: flat after the table filled
    assert "holder" in lim.principals and lim.release("held", 0) == []  # never forgotten in flight
    assert lim.acquire("again", "holder", holder, 0) is True


def test_a_new_principal_gets_503_while_no_tracked_one_has_settled_then_fits():
    clock = ManualClock(1000.0)
    lim = Limiter(clock=clock, max_principals=3)
    limits = Limits(requests_per_minute=60)
    for key in ("a", "b", "c"):
        assert lim.acquire(key, key, limits, 0) is True
        lim.release(key, 0)
    refused = lim.acquire("d", "d", limits, 0)
    assert isinstance(refused, Refusal) and refused.status == 503
    assert "--max-tracked-principals 3" in refused.message and refused.retry_after_header == "1"
    assert lim.acquire("a2", "a", limits, 0) is True  # a tracked principal is served as before
    lim.release("a2", 0)
    clock.now += 1.0  # b and c have refilled; a used its bucket again a moment ago
    assert lim.acquire("d", "d", limits, 0) is True
    assert "a" in lim.principals and len(lim.principals) == 3


def test_a_principal_with_a_request_in_flight_or_waiting_is_never_forgotten():
    clock = ManualClock(1000.0)
    lim = Limiter(clock=clock, max_principals=2, max_seqs=1)
    assert lim.acquire("run", "a", Limits(), 0) is True
    assert lim.acquire("wait", "b", Limits(), 0) is False  # queued for the one slot
    clock.now += 3600
    assert lim.acquire("c", "c", Limits(), 0).status == 503
    assert lim.release("run", 0) == ["wait"]
    assert lim.acquire("c", "c", Limits(), 0) is False  # a settled: forgotten, c waits its turn


def test_a_forgotten_principal_returns_exactly_where_it_would_have_been():
    clock = ManualClock(1000.0)
    lim = Limiter(clock=clock, max_principals=1)
    limits = Limits(requests_per_minute=2, tokens_per_minute=1000)
    assert lim.acquire(1, "a", limits, 600) is True
    lim.release(1, used_tokens=600)
    assert isinstance(lim.acquire(2, "b", limits, 0), Refusal)  # a's tokens refill in 36 s
    clock.now += 36
    assert lim.acquire(3, "b", limits, 0) is True and "a" not in lim.principals
    lim.release(3, 0)
    clock.now += 60
    assert lim.acquire(4, "a", limits, 1000) is True  # a full minute's worth, as if never forgotten


def test_a_bad_cap_names_its_flag(capsys):
    from bastion.cli import main

    assert main(["serve", "--max-tracked-principals", "0"]) == 2
    assert "--max-tracked-principals must be at least 1, got 0" in capsys.readouterr().err
