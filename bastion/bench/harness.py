"""One way to run `bastion serve` from outside it: start, read the ready line, stop.

The bench commands and the integration tests start real servers alike: `python -P -m bastion.cli
[--log-level L] serve ARGS` (child_python.py: nothing from `cwd` is imported) with stdout piped and read line by line until a ready line matches
(`SERVING`: a server's `bastion: serving NAMES on URL (...)`; `SUPERVISING`: a supervisor's;
`HEADLESS`: a headless node's). stdout is kept and drained for the process's whole life, so a
server never blocks on a full pipe. stderr is kept too (tests read the log), or left on ours
(`capture_stderr=False`: the bench's user watches the server's log). A server that exits or
misses its deadline before the ready line is stopped, and the error carries what it printed.
`stop` is `procs.terminate` (SIGTERM, then SIGKILL); subclasses extend it to reap more.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import threading
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Sequence

from bastion.args.engine import engine_kwargs
from bastion.child_python import python_command, python_environment
from bastion.launch.procs import terminate

SERVING = re.compile(r"bastion: serving .* on (?P<url>https?://\S+) ")
SUPERVISING = re.compile(r"bastion: supervising (\d+) ranks (?:\(.*\) )?of .* at (?P<rank_urls>.*); "
                         r"supervisor at (?P<url>https?://\S+) ")
HEADLESS = re.compile(r"bastion: headless node serving ranks ")
STDERR_TAIL_CHARS = 6000


class ServeProcess:
    """`bastion serve ARGS` as a child process, its output kept in `stdout` / `stderr` (lines)."""

    def __init__(self, serve_args: Sequence[str], ready: re.Pattern[str] = SERVING, *,
                 log_level: str | None = None, env: dict[str, str] | None = None,
                 capture_stderr: bool = True, cwd: str | None = None) -> None:
        cmd = python_command("bastion.cli", *(("--log-level", log_level) if log_level else ()),
                             "serve", *serve_args)
        self.command = cmd  # the full command line, for a bench's record
        self.ready_line = ready
        self.match: re.Match[str] | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._settled = threading.Event()  # the ready line came, or stdout closed
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                     stderr=subprocess.PIPE if capture_stderr else None,
                                     env=python_environment({**os.environ, **(env or {})}), cwd=cwd)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._stderr_reader: threading.Thread | None = None
        if capture_stderr:
            self._stderr_reader = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr),
                                                   daemon=True)
            self._stderr_reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.stdout.append(line)
            if self.match is None:
                self.match = self.ready_line.search(line)
                if self.match is not None:
                    self._settled.set()
        self._settled.set()

    def wait_ready(self, timeout: float, what: str = "server") -> re.Match[str]:
        """The ready line's match. If the process exits or `timeout` passes first, `stop` it and
        raise RuntimeError naming `what`, with what it printed."""
        self._settled.wait(timeout)
        if self.match is not None:
            return self.match
        closed = self._settled.is_set()  # stdout closed: it is exiting
        try:
            code = self.proc.wait(10) if closed else self.proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        self.stop()
        why = (f"exited with code {code}" if code is not None else "closed its stdout" if closed
               else f"did not become ready in {timeout:g} s")
        raise RuntimeError(f"{what} {why}; {self.output()}")

    def output(self) -> str:
        """What it printed: its stdout, and its stderr's tail (or where that went)."""
        if self._stderr_reader is None:
            return f"stdout={''.join(self.stdout)!r} (its log is above)"
        return f"stdout={''.join(self.stdout)!r} stderr={self.log()[-STDERR_TAIL_CHARS:]}"

    def log(self) -> str:
        """Its stderr so far (all of it, once it has exited)."""
        if self._stderr_reader is not None and self.proc.poll() is not None:
            self._stderr_reader.join(5)
        return "".join(self.stderr)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Its exit code; subprocess.TimeoutExpired if it is still running after `timeout`."""
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM; SIGKILL if it is still there after `timeout`; reaped."""
        terminate(self.proc, timeout)


class BenchServer(NamedTuple):
    """A server a bench started: where it answers, and the full command line that started it."""

    url: str
    command: list[str]


@contextmanager
def bench_server(model: str, args: argparse.Namespace, extra: Sequence[str] = ()) -> Iterator[BenchServer]:
    """`bastion serve MODEL --port 0` with the bench's engine flags and `extra`, up until the
    block ends."""
    server = ServeProcess([model, "--port", "0", *engine_flags(args), *extra], capture_stderr=False)
    try:
        yield BenchServer(server.wait_ready(600, "the benchmark's server")["url"], list(server.command))
    finally:
        server.stop(60)


def engine_flags(args: argparse.Namespace) -> list[str]:
    """The engine flags given to the bench, as `bastion serve` arguments."""
    flags = []
    for name, value in engine_kwargs(args).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else flag.replace("--", "--no-", 1))
        elif value is not None:
            flags += [flag, str(value)]
    return flags
