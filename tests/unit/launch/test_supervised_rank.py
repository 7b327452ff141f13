"""A supervised rank's states, driven by hand: probes, exits, backoff, start-up deadlines."""
from __future__ import annotations

from manual_clock import ManualClock

from bastion.launch.restart import RestartPolicy
from bastion.launch.supervisor.probe import ProbeResult
from bastion.launch.supervisor.supervised_rank import SupervisedRank, exit_reason

PASS = ProbeResult(True, 0.01, 200)
REFUSED = ProbeResult(False, 0.01, error="ConnectError: [Errno 111] Connection refused")


def slot(clock: ManualClock, max_restarts: int = 2, threshold: int = 3) -> SupervisedRank:
    rank = SupervisedRank(1, "http://127.0.0.1:8001", RestartPolicy(max_restarts, 600, clock), threshold, 30.0)
    rank.started(pid=100, now=clock())
    return rank


def test_failed_probes_while_starting_do_not_count_and_the_first_pass_makes_it_ready():
    clock = ManualClock()
    rank = slot(clock)
    for _ in range(10):
        assert rank.on_probe(REFUSED, clock()) is False
    assert rank.state == "starting" and rank.last_probe == REFUSED
    rank.on_probe(PASS, clock())
    assert rank.ready and rank.reason is None


def test_threshold_failures_in_a_row_make_a_ready_rank_unhealthy_and_a_pass_resets_the_count():
    clock = ManualClock()
    rank = slot(clock, threshold=3)
    rank.on_probe(PASS, clock())
    assert [rank.on_probe(REFUSED, clock()) for _ in range(2)] == [False, False]
    rank.on_probe(PASS, clock())
    assert rank.failures == 0
    assert [rank.on_probe(REFUSED, clock()) for _ in range(3)] == [False, False, True]
    assert rank.state == "unhealthy" and "failed 3 probes in a row" in rank.reason
    assert "Connection refused" in rank.reason


def test_an_exit_restarts_with_doubling_backoff_then_the_rank_is_failed():
    clock = ManualClock(100.0)
    rank = slot(clock, max_restarts=2)
    rank.on_exit(-9, "", clock())
    assert rank.state == "restarting" and rank.reason == "killed by SIGKILL" and rank.restart_at == 101
    assert not rank.restart_due(100.5) and rank.restart_due(101)
    rank.started(pid=101, now=101)
    rank.on_exit(2, "cannot listen on 127.0.0.1:8001 (--host/--port): Address already in use", 102)
    assert rank.restart_at == 104 and "exited with code 2: cannot listen" in rank.reason
    rank.started(pid=102, now=104)
    rank.on_exit(2, "same again", 105)
    assert rank.state == "failed" and "out of restarts (2 within 600 s" in rank.reason
    assert rank.describe(105)["restarts"] == 2


def test_an_unhealthy_rank_keeps_its_reason_through_the_restart():
    clock = ManualClock()
    rank = slot(clock, threshold=1)
    rank.on_probe(PASS, clock())
    assert rank.on_probe(REFUSED, clock())
    rank.on_exit(-9, "", clock())
    assert rank.state == "restarting" and rank.reason.startswith("failed 1 probes in a row")


def test_the_start_up_deadline():
    clock = ManualClock(0.0)
    rank = slot(clock)
    assert not rank.start_overdue(29.9) and rank.start_overdue(30.0)
    rank.on_probe(PASS, 1.0)
    assert not rank.start_overdue(99.0)


def test_describe_shows_the_last_probe():
    clock = ManualClock(10.0)
    rank = slot(clock)
    rank.on_probe(REFUSED, 10.0)
    row = rank.describe(10.5)
    assert row["state"] == "starting" and row["pid"] == 100 and row["url"] == "http://127.0.0.1:8001"
    assert row["last_probe"] == {"ok": False, "status": None, "error": REFUSED.error, "latency_ms": 10.0,
                                 "age_s": 0.5}


def test_exit_reasons():
    assert exit_reason(-15, "x") == "killed by SIGTERM"
    assert exit_reason(1, "boom") == "exited with code 1: boom"
