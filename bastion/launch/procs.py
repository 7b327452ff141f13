"""Child processes of the launcher: spawn, hand over the spec, await the handshake, watch, stop.

Children run `python -P -m bastion.launch.child` (child_python.py: nothing from the working
directory is imported). Their spec travels on stdin (never argv), their
handshake comes back on stdout, and their stderr is forwarded line by line to ours while the
last lines are kept, so a child that dies during start-up fails the launch with its name and
what it said last. Children get their own session: terminal signals reach only the launcher,
which decides how each child stops.
"""
from __future__ import annotations

import collections
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time

import msgspec

from bastion.child_python import python_command, python_environment
from bastion.transport.child_pipe import ChildSpec, Handshake, decode_handshake, read_frame, write_frame

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 20


class ChildStartError(RuntimeError):
    """A child failed, died or timed out before its handshake; the message names it."""


class Child:
    """One running child process of the launcher."""

    def __init__(self, name: str, spec: ChildSpec, pass_fds: tuple[int, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._send_lock = threading.Lock()
        self.proc = subprocess.Popen(
            python_command("bastion.launch.child", name), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds,
            start_new_session=True, env=python_environment(env), bufsize=0)
        self.sentinel = os.pidfd_open(self.proc.pid)  # readable once the child has exited
        self._stderr = threading.Thread(target=self._forward_stderr, daemon=True)
        self._stderr.start()
        write_frame(self.proc.stdin.fileno(), spec)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _forward_stderr(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            print(line, file=sys.stderr, flush=True)

    def last_lines(self, wait: bool = True) -> str:
        """Its last log lines, indented; `wait` gives an exited child's stderr up to 2 s to drain."""
        if wait:
            self._stderr.join(timeout=2)
        return "\n".join(f"    {line}" for line in self._tail_now()) or "    (no output)"

    def last_line(self) -> str:
        """Its last non-empty log line (waits up to 2 s for its stderr to close)."""
        self._stderr.join(timeout=2)
        return next((line.strip() for line in reversed(self._tail_now()) if line.strip()), "(no output)")

    def _tail_now(self) -> list[str]:
        """A copy of the tail. NOTE: taken in one C call, which no thread switch splits: the
        stderr reader appends meanwhile, and iterating the deque itself can raise "deque mutated
        during iteration" (in the supervisor's tick loop, whose start-up timeout then never fired)."""
        return list(self.tail)

    def await_handshake(self, deadline: float) -> Handshake:
        """Wait for the child's handshake frame; raise ChildStartError if it fails or dies."""
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([self.proc.stdout], [], [], max(remaining, 0))
        payload = read_frame(self.proc.stdout) if ready else None
        if payload is not None:
            try:
                reply = decode_handshake(payload)
            except msgspec.DecodeError as exc:
                raise self._start_error(f"sent a malformed handshake ({exc})")
            if type(reply).__name__ != "ChildFailed":
                return reply
            self.wait(10)
            raise self._start_error(f"failed to start: {reply.message}")
        if not ready:
            self.kill()
            raise self._start_error("did not become ready in time")
        code = self.wait(10)
        raise self._start_error(f"exited with code {code} during start-up")

    def _start_error(self, what: str) -> ChildStartError:
        return ChildStartError(f"{self.name} {what}; its last log lines:\n{self.last_lines()}")

    def send(self, message: msgspec.Struct) -> None:
        """Send a control frame (from any thread); a child that is gone is ignored."""
        with self._send_lock:
            try:
                write_frame(self.proc.stdin.fileno(), message)
            except (BrokenPipeError, OSError, ValueError):
                pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def kill_tree(self) -> None:
        """SIGKILL this child and everything it started (even a stopped grandchild that would
        never read its EOF)."""
        family = descendants(self.pid) if self.alive() else []
        self.kill()
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; always reaps."""
        self.signal(signal.SIGTERM)
        if self.wait(timeout) is None:
            logger.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
            self.kill()
            self.wait(10)
        self.close()

    def close(self) -> None:
        """Release our ends of the pipes and the pidfd of an exited child."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # NOTE: the name may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def await_all(children: list[Child], timeout: float) -> list[Handshake]:
    """Handshakes of every child, in order; on any failure stop them all and raise."""
    deadline = time.monotonic() + timeout
    replies = []
    try:
        for child in children:
            replies.append(child.await_handshake(deadline))
    except ChildStartError:
        for child in children:
            child.kill()
            child.wait(10)
        raise
    return replies


def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a process we started; SIGKILL it if it is still there after `timeout`; reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
