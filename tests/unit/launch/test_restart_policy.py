"""Restart backoff and the restart budget, with a hand-driven clock."""
from __future__ import annotations

from manual_clock import ManualClock

from bastion.launch.restart import RestartPolicy, after_loss
from bastion.transport.rank_state import RankState


def test_backoff_doubles_to_the_cap_then_the_rank_fails():
    clock = ManualClock(0.0)
    policy = RestartPolicy(max_restarts=8, window_s=10_000, clock=clock)
    delays = []
    for _ in range(8):
        delays.append(policy.next_delay())
        clock.now += 1
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.next_delay() is None and policy.total == 8


def test_a_quiet_window_resets_the_backoff_and_the_budget():
    clock = ManualClock(0.0)
    policy = RestartPolicy(max_restarts=2, window_s=100, clock=clock)
    assert [policy.next_delay(), policy.next_delay()] == [1, 2]
    assert policy.next_delay() is None
    clock.now += 101
    assert policy.next_delay() == 1 and policy.total == 3


def test_zero_restarts_means_fail_at_once():
    assert RestartPolicy(max_restarts=0, window_s=60).next_delay() is None


def test_after_loss_is_restarting_at_a_time_until_the_budget_is_used_then_failed():
    clock = ManualClock(100.0)
    policy = RestartPolicy(max_restarts=2, window_s=600, clock=clock)
    assert after_loss(policy, 100.0) == (RankState.RESTARTING, 101.0)
    assert after_loss(policy, 102.0) == (RankState.RESTARTING, 104.0)
    assert after_loss(policy, 105.0) == (RankState.FAILED, None)
    assert RankState.FAILED == "failed" and f"{RankState.RESTARTING}" == "restarting"
