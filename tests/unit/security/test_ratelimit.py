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


def _drain(lim: Limiter, running: list, admitted_order: list, steps: int = 200) -> None:
    """End the oldest running request, one at a time, until nothing runs (bounded)."""
    for _ in range(steps):
        if not running:
            return
        admitted = lim.release(running.pop(0), 0)
        admitted_order += admitted
        running += admitted


def test_a_big_head_does_not_block_another_tenants_small_requests():
    """4 slots: B runs 3 one-slot requests; A asks for all 4 and waits; C's one-slot requests
    are admitted as slots free up, on their turns, instead of waiting for everything to end."""
    lim = Limiter(max_seqs=4)
    free = Limits()
    for i in range(3):
        assert lim.acquire(f"b{i}", "b", free, 0, group="B") is True
    assert lim.acquire("big", "a", free, 0, group="A", seqs=4) is False
    assert lim.acquire("c0", "c", free, 0, group="C") is False
    assert lim.acquire("c1", "c", free, 0, group="C") is False
    admitted = lim.release("b0", 0)  # a slot frees: A's turn, held for it
    admitted += lim.release("b1", 0)  # C's turn: c0 fits and runs while b2 still runs
    assert admitted == ["c0"] and lim.tickets["b2"].granted
    running = ["b2", "c0"]
    order: list = []
    _drain(lim, running, order)
    assert order == ["c1", "big"] or order == ["big", "c1"], order
    assert "big" in order and lim.queued == 0 and lim.seats_used == 0 and not lim.tickets


def test_a_big_request_still_runs_under_a_steady_stream_of_small_ones():
    """One small request arrives and one ends, round after round: the small ones keep running
    while the big one waits, and the big one gets slots on its turns until it runs."""
    lim = Limiter(max_seqs=4)
    free = Limits()
    running = [f"s{i}" for i in range(4)]
    for ticket in running:
        assert lim.acquire(ticket, "small", free, 0, group="S") is True
    assert lim.acquire("big", "big", free, 0, group="B", seqs=4) is False
    admitted_order: list = []
    for i in range(40):  # bounded: each round a new small request arrives, the oldest one ends
        assert lim.acquire(f"n{i}", "small", free, 0, group="S") is False
        admitted = lim.release(running.pop(0), 0)
        admitted_order += admitted
        running += [t for t in admitted if t != "big"]
        if "big" in admitted:
            break
    assert "big" in admitted_order, admitted_order
    assert admitted_order[0] == "n0", admitted_order  # small ones ran while it waited
    assert lim.tickets["big"].granted and lim.seats_used == 4


def test_several_big_heads_take_turns_without_a_deadlock():
    """Three tenants each want 3 of 4 slots, a fourth sends one-slot requests: one big head at a
    time holds slots (two holding half each would wait forever), the one-slot requests run on
    their turns meanwhile, and everything ends."""
    lim = Limiter(max_seqs=4)
    free = Limits()
    running = ["s0", "s1", "s2"]
    for ticket in running:
        assert lim.acquire(ticket, "s", free, 0, group="S") is True
    for group in "ABC":
        assert lim.acquire(f"big{group}", group, free, 0, group=group, seqs=3) is False
    for i in range(4):
        assert lim.acquire(f"d{i}", "d", free, 0, group="D") is False
    order: list = []
    _drain(lim, running, order)
    assert sorted(order) == ["bigA", "bigB", "bigC", "d0", "d1", "d2", "d3"], order
    assert order[0] == "d0", order  # a one-slot request ran before any big one could
    assert lim.queued == 0 and lim.seats_used == 0 and lim.running == 0 and not lim.tickets


def test_a_big_request_that_gives_up_hands_its_held_slots_on():
    lim = Limiter(max_seqs=2)
    free = Limits()
    assert lim.acquire("run", "a", free, 0, group="A") is True
    assert lim.acquire("big", "b", free, 0, group="B", seqs=2) is False  # holds the free slot
    assert lim.acquire("small", "c", free, 0, group="C") is False
    assert lim.seats_used == 2 and lim.queued == 2
    assert lim.release("big", 0) == ["small"]  # its held slot goes to the next in line
    assert lim.seats_used == 2 and lim.queued == 0


def test_random_arrivals_and_ends_keep_the_slot_count_and_never_stall():
    """A seeded random mix of sizes, tenants, departures while waiting and ends: slots are never
    over-given, held slots are counted once, and whenever nothing runs nothing waits."""
    import random

    rng = random.Random(7)
    lim = Limiter(max_seqs=6, max_concurrent=4, max_waiting=1000)
    free = Limits()
    live: list = []
    for step in range(3000):
        if live and rng.random() < 0.45:
            lim.release(live.pop(rng.randrange(len(live))), 0)
        else:
            ticket = f"t{step}"
            result = lim.acquire(ticket, "k", free, 0, group=rng.choice("ABCD"),
                                 seqs=rng.choice([1, 1, 1, 2, 4, 6, 9]))
            assert result in (True, False)
            live.append(ticket)
        granted = [t for t in lim.tickets.values() if t.granted]
        assert lim.seats_used == sum(t.seats for t in granted) + lim.waiting.held <= 6
        assert lim.running == len(granted) <= 4
        assert lim.queued == len(lim.tickets) - len(granted)
        assert lim.running or not lim.queued, step  # nothing runs: nothing may wait
    for ticket in live:
        lim.release(ticket, 0)
    assert not lim.tickets and lim.seats_used == 0 and lim.waiting.reserver is None
