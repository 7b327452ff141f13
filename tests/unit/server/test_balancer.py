"""Rank choice: least outstanding work, round-robin ties, prefix affinity within a bound."""
from __future__ import annotations

from bastion.server.balancer import RankBalancer

SHORT = [1, 2, 3]
LONG_A = list(range(100, 164))
LONG_B = list(range(200, 264))


def test_ties_go_round_robin_and_sends_count_until_the_next_load():
    b = RankBalancer(3)
    assert [b.choose(SHORT) for _ in range(3)] == [0, 1, 2]   # each send adds 3 tokens
    assert b.choose(SHORT) == 0
    assert b.choose(SHORT) == 1
    b.on_load(0, 0, 0), b.on_load(1, 0, 0), b.on_load(2, 0, 0)
    assert b.choose(SHORT) == 2


def test_the_least_loaded_rank_wins():
    b = RankBalancer(3)
    b.on_load(0, 500, 2)
    b.on_load(1, 20, 0)
    b.on_load(2, 300, 1)
    assert b.choose(SHORT) == 1
    assert b.queued() == 3 + 1   # published waiting plus the request just sent


def test_dead_ranks_are_skipped_and_none_when_all_are_down():
    b = RankBalancer(2)
    b.alive[0] = False
    assert {b.choose(SHORT) for _ in range(4)} == {1}
    b.alive[1] = False
    assert b.choose(SHORT) is None


def test_prefix_affinity_holds_within_the_bound_and_yields_beyond_it():
    b = RankBalancer(2, affinity_tokens=100)
    assert b.choose(LONG_A) == 0
    b.on_load(0, 50, 0)
    b.on_load(1, 0, 0)
    assert b.choose(LONG_A + [7]) == 0        # same first 64 tokens, 50 <= 0 + 100
    assert b.choose(LONG_B) == 1              # a new prefix goes to the least loaded
    b.on_load(0, 500, 0)
    b.on_load(1, 0, 0)
    assert b.choose(LONG_A) == 1              # 500 > 0 + 100: load wins, affinity moves
    b.on_load(0, 0, 0), b.on_load(1, 80, 0)
    assert b.choose(LONG_A) == 1


def test_the_cache_salt_separates_affinity():
    b = RankBalancer(2, affinity_tokens=10_000)
    assert b.choose(LONG_A, salt="tenant-a") == 0
    b.on_load(0, 100, 0), b.on_load(1, 0, 0)
    assert b.choose(LONG_A, salt="tenant-b") == 1
    assert b.choose(LONG_A, salt="tenant-a") == 0


def test_a_role_s_ranks_are_chosen_among_themselves_whatever_the_prefix_affinity_says():
    """Disaggregated serving: a prompt's prefill rank is remembered for its next prefill, and
    never handed back when its decode rank is chosen (and the other way round)."""
    balancer = RankBalancer(3)
    prompt = list(range(100))
    assert balancer.choose(prompt, among={0}) == 0
    assert balancer.choose(prompt, among={1, 2}) in (1, 2)
    decode = balancer.choose(prompt, among={1, 2})
    assert decode in (1, 2)
    assert balancer.choose(prompt, among={0}) == 0 and balancer.choose(prompt, among={1, 2}) in (1, 2)
    balancer.alive[1] = balancer.alive[2] = False
    assert balancer.choose(prompt, among={1, 2}) is None  # never a rank of the other role
