"""A real `bastion serve` process for integration tests: started on port 0, its URL read from
its ready line, its children found with psutil, and every process gone when it is stopped."""
from __future__ import annotations

import signal
import time

import httpx
import psutil

from bastion.bench.harness import SERVING, ServeProcess


TEST_SERVER_KV_MEMORY = "512MiB"


class ServerProcess(ServeProcess):
    """`bastion serve ARGS --port 0`; raises with its output if it never becomes ready."""

    def __init__(self, *args: str, timeout: float = 180.0, env: dict[str, str] | None = None,
                 http: dict | None = None, cwd: str | None = None) -> None:
        # NOTE: a test server's KV pool is 512 MiB unless the test sizes it (the default fills up to
        # 4 GiB: the demo model's 128 full sequences take 1 GiB an engine, and two xdist workers'
        # servers together ran the 24 GiB machine out of memory)
        sized = any(a.split("=")[0] in ("--kv-cache-memory", "--num-kv-blocks") for a in args)
        pool = () if sized else ("--kv-cache-memory", TEST_SERVER_KV_MEMORY)
        super().__init__(["--port", "0", *args, *pool], SERVING, log_level="warning", env=env, cwd=cwd)
        self.http = http or {}  # httpx options (headers, verify, cert) for metric()
        self.children: list[psutil.Process] = []
        self.url = self.wait_ready(timeout)["url"]
        self.children = psutil.Process(self.proc.pid).children(recursive=True)

    def engine_pids(self) -> list[int]:
        return [c.pid for c in self.children if "engine-" in " ".join(c.cmdline())]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        text = httpx.get(f"{self.url}/metrics", timeout=10, **self.http).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_for_metric(self, name: str, predicate, timeout: float = 15.0, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(name, **labels)
            if predicate(value) or time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def sigterm_leaves_nothing(self, timeout: float = 60.0) -> bool:
        """SIGTERM the launcher: True when it exits 0 and every process of its tree (as it is
        now, restarted ranks and their workers included) is gone."""
        tree = psutil.Process(self.proc.pid).children(recursive=True)
        self.signal(signal.SIGTERM)
        if self.wait(timeout) != 0:
            return False
        _, alive = psutil.wait_procs(tree, timeout=15)
        return not alive

    def children_gone(self, timeout: float = 15.0) -> bool:
        _, alive = psutil.wait_procs(self.children, timeout=timeout)
        return not alive

    def stop(self, timeout: float = 40.0) -> None:
        """Stop the launcher and make sure no child outlives the test."""
        super().stop(timeout)
        for child in self.children:
            if child.is_running():
                child.kill()
        psutil.wait_procs(self.children, timeout=10)

    kill = stop  # the tests' name for it
