"""A real Ray cluster of "nodes" on loopback addresses of this machine (never its external one):
each node is `ray start --block --node-ip-address IP`, so its whole process tree (raylet, actors,
their engines) is ours to find and to kill by PID. Nodes get a clean environment: no secrets,
no BASTION_HOST_IP, so what an actor holds came from the driver's propagation or not at all."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bastion.bench.ports import free_port_block

RAY = str(Path(sys.executable).with_name("ray"))
# NOTE: a dead node is noticed after about 1.5 s instead of Ray's default 15 s
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                      "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}
CLEAN_ENV_KEEP = ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")


def clean_env(token_path: str) -> dict[str, str]:
    """A node's environment: the basics, fast health checks, and Ray's token authentication with
    the cluster's own token file (never ~/.ray/auth_token, whatever an earlier run left there)."""
    env = {k: v for k, v in os.environ.items() if k in CLEAN_ENV_KEEP}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", **FAST_HEALTH_CHECKS, **ray_auth(token_path)}


def ray_auth(token_path: str) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path}


class RayNode:
    """One `ray start --block` node, its process tree found with psutil."""

    def __init__(self, ip: str, cpus: int, head_port: int, temp_dir: str, token_path: str,
                 head: bool = False) -> None:
        self.ip = ip
        cmd = [RAY, "start", "--block", "--node-ip-address", ip, "--num-cpus", str(cpus),
               "--num-gpus", "0", "--disable-usage-stats"]
        if head:
            cmd += ["--head", "--port", str(head_port), "--include-dashboard=false",
                    "--temp-dir", temp_dir]
        else:
            cmd += ["--address", f"127.0.0.2:{head_port}"]
        self.log = open(Path(temp_dir).parent / f"node-{ip}.log", "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=clean_env(token_path))

    def family(self) -> list[psutil.Process]:
        try:
            return [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def processes(self, pattern: str) -> list[psutil.Process]:
        """This node's processes whose command line matches `pattern`."""
        found = []
        for proc in self.family():
            try:
                if re.search(pattern, " ".join(proc.cmdline())):
                    found.append(proc)
            except psutil.Error:
                pass
        return found

    def kill(self) -> None:
        """The node dies at once: SIGKILL its whole tree."""
        family = self.family()
        for proc in family:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(family, timeout=10)
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]


class RayCluster:
    """A head node at 127.0.0.2 and workers at further loopback addresses, up and registered."""

    def __init__(self, cpus: dict[str, int]) -> None:
        self.root = tempfile.mkdtemp(prefix="bray-")
        self.port = free_port_block(1, "127.0.0.2")
        self.address = f"127.0.0.2:{self.port}"
        self.nodes: dict[str, RayNode] = {}
        self.token_path = f"{self.root}/auth_token"
        Path(self.token_path).write_text(secrets.token_hex(32))
        os.chmod(self.token_path, 0o600)
        try:
            (head_ip, head_cpus), *workers = cpus.items()
            self.nodes[head_ip] = RayNode(head_ip, head_cpus, self.port, f"{self.root}/t", self.token_path,
                                          head=True)
            self._await_nodes(1)
            for ip, count in workers:
                self.nodes[ip] = RayNode(ip, count, self.port, f"{self.root}/t", self.token_path)
            self._await_nodes(len(cpus))
        except BaseException:
            self.stop()
            raise

    def _await_nodes(self, count: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and all(n.proc.poll() is None for n in self.nodes.values()):
            status = subprocess.run([RAY, "status", "--address", self.address], capture_output=True,
                                    text=True, env=clean_env(self.token_path), timeout=60)
            active = status.stdout.split("Active:")[-1].split("Pending:")[0]
            if active.count("node_") >= count:
                return
            time.sleep(1)
        logs = "\n".join(f"--- {ip}\n{node.output()}" for ip, node in self.nodes.items())
        raise RuntimeError(f"the Ray cluster did not reach {count} nodes:\n{logs}")

    def driver_env(self) -> dict[str, str]:
        """What a driver on this machine needs to join: the address and the token file."""
        return {"RAY_ADDRESS": self.address, **ray_auth(self.token_path)}

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)
