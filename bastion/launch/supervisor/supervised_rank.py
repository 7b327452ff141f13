"""One supervised rank (a whole server): what its probes and its process say, and when it restarts.

    starting --probe passes--> ready --threshold failed probes in a row--> unhealthy (stopped)
       ^                                                                       |
       +---- restart after backoff <---- restarting <---- process exits <------+
    restarting --out of restarts--> failed          (draining: stopped, never restarted)

Probes of a rank that is starting never count against it (it is loading); its start-up has a
deadline instead. The states are every rank's (transport/rank_state.py) and so is the decision
after a loss (restart.py: `after_loss`). Pure bookkeeping with the clock passed in, so tests
drive it by hand.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

from bastion.launch.restart import RestartPolicy, after_loss
from bastion.launch.supervisor.probe import ProbeResult
from bastion.transport.rank_state import RankState


@dataclass
class SupervisedRank:
    index: int
    url: str
    policy: RestartPolicy
    failure_threshold: int
    startup_timeout_s: float
    state: RankState = RankState.STARTING
    pid: int | None = None
    reason: str | None = None  # why it is not ready (the last exit, failed probes, ...)
    failures: int = 0  # consecutive failed probes while ready
    last_probe: ProbeResult | None = None
    last_probe_at: float | None = None
    restart_at: float | None = None
    start_deadline: float = 0.0

    def started(self, pid: int, now: float) -> None:
        self.state, self.pid, self.failures = RankState.STARTING, pid, 0
        self.restart_at, self.start_deadline = None, now + self.startup_timeout_s

    def on_probe(self, result: ProbeResult, now: float) -> bool:
        """Record a probe; True when it made a ready rank unhealthy (the caller stops it)."""
        self.last_probe, self.last_probe_at = result, now
        if self.state == RankState.STARTING and result.ok:
            self.state, self.reason, self.failures = RankState.READY, None, 0
        elif self.state == RankState.READY:
            self.failures = 0 if result.ok else self.failures + 1
            if self.failures >= self.failure_threshold:
                self.unhealthy(f"failed {self.failures} probes in a row (last: {result.error})")
                return True
        return False

    def unhealthy(self, reason: str) -> None:
        """Mark it for stopping (failed probes, or not ready by its start-up deadline)."""
        self.state, self.reason = RankState.UNHEALTHY, reason

    def start_overdue(self, now: float) -> bool:
        return self.state == RankState.STARTING and now >= self.start_deadline

    def on_exit(self, code: int | None, last_line: str, now: float) -> None:
        """Its process is gone: restart after the backoff, or fail it when out of restarts."""
        why = self.reason if self.state == RankState.UNHEALTHY else exit_reason(code, last_line)
        self.pid, self.failures = None, 0
        self.state, self.restart_at = after_loss(self.policy, now)
        if self.state == RankState.FAILED:
            self.reason = (f"{why}; out of restarts ({self.policy.max_restarts} within "
                           f"{self.policy.window_s:g} s: --max-rank-restarts, --rank-restart-window-s)")
        else:
            self.reason = why

    def restart_due(self, now: float) -> bool:
        return self.state == RankState.RESTARTING and self.restart_at is not None and now >= self.restart_at

    @property
    def ready(self) -> bool:
        return self.state == RankState.READY

    def describe(self, now: float) -> dict:
        """Its row in the supervisor's `/ranks`."""
        row = {"rank": self.index, "url": self.url, "state": self.state, "restarts": self.policy.total,
               "pid": self.pid, "reason": self.reason}
        if self.restart_at is not None and self.state == RankState.RESTARTING:
            row["restart_in_s"] = round(max(0.0, self.restart_at - now), 3)
        probe = self.last_probe
        if probe is not None:
            row["last_probe"] = {"ok": probe.ok, "status": probe.status, "error": probe.error,
                                 "latency_ms": round(probe.latency_s * 1000, 1),
                                 "age_s": round(now - (self.last_probe_at or now), 3)}
        return row


def exit_reason(code: int | None, last_line: str) -> str:
    """Why a rank's process ended: the signal that killed it, or its exit code and last words."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}: {last_line}"
