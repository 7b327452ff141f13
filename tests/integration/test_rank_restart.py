"""Dead engine ranks come back: restarted with backoff while the other ranks serve, reported by
/health while they recover, and given up (failed) after too many restarts."""
from __future__ import annotations

import shutil
import time

import httpx
import psutil

from server_process import ServerProcess


def complete(url: str) -> int:
    return httpx.post(f"{url}/v1/completions", timeout=30,
                      json={"model": "bastion-demo", "prompt": "Once", "max_tokens": 3}).status_code


def engines(server: ServerProcess) -> dict[str, int]:
    found = {}
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        for part in proc.cmdline():
            if part.startswith("engine-"):
                found[part] = proc.pid
    return found


def test_a_killed_rank_is_restarted_while_the_other_serves():
    server = ServerProcess("-dp", "2")
    try:
        before = engines(server)
        psutil.Process(before["engine-0"]).kill()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            health = httpx.get(f"{server.url}/health")
            if health.status_code == 503:
                break
            time.sleep(0.05)
        rank0 = health.json()["ranks"][0]
        assert health.status_code == 503 and rank0["state"] == "restarting" and rank0["restarts"] == 1
        assert "engine-0 exited" in rank0["reason"]
        assert [complete(server.url) for _ in range(4)] == [200] * 4  # rank 1 serves meanwhile
        deadline = time.monotonic() + 120
        while httpx.get(f"{server.url}/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        health = httpx.get(f"{server.url}/health").json()
        assert health["ranks"][0] == {"rank": 0, "state": "ready", "restarts": 1}
        after = engines(server)
        assert after["engine-0"] != before["engine-0"] and after["engine-1"] == before["engine-1"]
        served_by_0 = server.metric("bastion_rank_requests_total", rank="0")
        for _ in range(8):
            assert complete(server.url) == 200
        assert server.metric("bastion_rank_requests_total", rank="0") > served_by_0
        assert server.sigterm_leaves_nothing()
    finally:
        server.kill()


def test_a_rank_that_keeps_crashing_is_failed_and_with_no_rank_left_the_server_exits_1(demo_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(demo_model, model)
    server = ServerProcess(str(model), "--max-rank-restarts", "2", "--served-model-name", "bastion-demo")
    try:
        assert complete(server.url) == 200
        for weights in model.glob("*.safetensors"):
            weights.write_bytes(b"corrupt")  # every restart now fails to load
        psutil.Process(engines(server)["engine-0"]).kill()
        assert server.wait(120) == 1
        log = "".join(server.stderr)
        assert "restarting it in 1 s" in log and "restarting it in 2 s" in log
        assert "used up its restarts" in log and "every engine rank has failed" in log
    finally:
        server.kill()
