"""A real `bastion serve` process for integration tests: started on port 0, its URL read from
its ready line, its children found with psutil, and every process gone when it is stopped."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import httpx
import psutil

from bastion.launch.procs import terminate  # noqa: F401 (tests import it from here)

READY = re.compile(r"bastion: serving .* on (https?://\S+) ")


class ServerProcess:
    """`bastion serve ARGS --port 0`; raises with its output if it never becomes ready."""

    def __init__(self, *args: str, timeout: float = 180.0, env: dict[str, str] | None = None,
                 http: dict | None = None) -> None:
        cmd = [sys.executable, "-m", "bastion.cli", "--log-level", "warning", "serve",
               "--port", "0", *args]
        self.http = http or {}  # httpx options (headers, verify, cert) for metric()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **env} if env else None)
        self.stderr: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()
        self.url = self._await_ready(timeout)
        self.children = psutil.Process(self.proc.pid).children(recursive=True)

    def _collect(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _await_ready(self, timeout: float) -> str:
        lines: list[str] = []
        holder: dict[str, str] = {}

        def read() -> None:
            for line in self.proc.stdout:
                lines.append(line)
                match = READY.search(line)
                if match:
                    holder["url"] = match.group(1)
                    return
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if "url" not in holder:
            self.kill()
            raise RuntimeError(f"server did not become ready; stdout={''.join(lines)!r} "
                               f"stderr={''.join(self.stderr)[-4000:]}")
        return holder["url"]

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

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def children_gone(self, timeout: float = 15.0) -> bool:
        _, alive = psutil.wait_procs(self.children, timeout=timeout)
        return not alive

    def kill(self) -> None:
        """Stop the launcher and make sure no child outlives the test."""
        terminate(self.proc, 40)
        for child in getattr(self, "children", []):
            if child.is_running():
                child.kill()
        psutil.wait_procs(getattr(self, "children", []), timeout=10)
