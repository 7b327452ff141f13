"""A real supervised deployment for integration tests: `bastion serve
--data-parallel-multi-port-external-lb` with its ranks on a block of free ports and the supervisor
on port 0 (its URL read from the ready line). Ranks restart, so their processes are found by
name: every `rank-*` child must be gone when a test ends."""
from __future__ import annotations

import subprocess
import time

import httpx
import psutil

from bastion.bench.harness import SUPERVISING, ServeProcess
from bastion.bench.ports import free_port_block


def rank_processes() -> list[psutil.Process]:
    """Every live process of any supervised rank (named `rank-N` or `rank-N/...`)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if "bastion.launch.child" in cmd and any(part.startswith("rank-") for part in cmd):
            found.append(proc)
    return found


def no_rank_left(timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while rank_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not rank_processes()


class SupervisorProcess(ServeProcess):
    """The supervisor and its `ranks` ranks; `wait_ready` blocks until its ready line."""

    def __init__(self, *args: str, ranks: int = 2, http: dict | None = None, wait_ready: bool = True,
                 timeout: float = 240.0, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port_block(ranks)
        self.http = http or {}  # httpx options (verify, cert, headers) for the supervisor
        super().__init__(["--data-parallel-multi-port-external-lb", "-dp", str(ranks), "--port", str(self.port),
                          "--data-parallel-supervisor-port", "0", *args], SUPERVISING, log_level="warning", env=env)
        self.rank_urls: list[str] = []
        self.url = ""
        if wait_ready:
            ready = self.wait_ready(timeout, "supervisor")
            self.rank_urls = [url.strip() for url in ready["rank_urls"].split(",")]
            self.url = ready["url"]

    def get(self, path: str, **options) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=10, **{**self.http, **options})

    def ranks(self, **options) -> list[dict]:
        reply = self.get("/ranks", **options)
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]

    def wait_for_rank(self, index: int, predicate, timeout: float = 120.0) -> dict:
        """Poll /ranks until rank `index`'s row satisfies `predicate`; returns that row."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.ranks()[index]
            if predicate(row):
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"rank {index} never got there; last row {row}; stderr "
                                     f"{''.join(self.stderr)[-3000:]}")
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        """Its exit code; if it has not exited in `timeout`, fail with its log and its processes."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            family = [f"{p.pid} {p.status()} {' '.join(p.cmdline())[-80:]}"
                      for p in psutil.Process(self.proc.pid).children(recursive=True) if p.is_running()]
            raise AssertionError(f"the supervisor did not exit in {timeout} s; its processes: {family}; "
                                 f"stdout: {''.join(self.stdout)[-1000:]}; stderr: {self.log()[-6000:]}") from None

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the supervisor and make sure no rank outlives the test."""
        super().stop(timeout)
        if not no_rank_left(30):
            for proc in rank_processes():  # NOTE: only supervisor tests start rank-* processes
                proc.kill()
            psutil.wait_procs(rank_processes(), timeout=10)

    kill = stop  # the tests' name for it
