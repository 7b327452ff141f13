"""Start-up, shutdown and failure of real servers: dead engines, drains, second signals, orphans."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from server_process import ServerProcess

LONG = {"prompt": "The function returns", "ignore_eos": True, "stream": True}


def bastion(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bastion.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_a_child_that_fails_at_start_up_fails_the_launch_with_its_log(tmp_path):
    result = bastion("serve", str(tmp_path / "missing"), "--port", "0")
    assert result.returncode == 1
    assert "engine-0 failed to start: ModelLoadError" in result.stderr
    assert "its last log lines" in result.stderr


def test_a_taken_port_and_bad_flags_fail_before_anything_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = bastion("serve", "--port", port)
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port} (--host/--port)" in result.stderr
    result = bastion("serve", "-dp", "0")
    assert result.returncode == 2 and "--data-parallel-size must be at least 1" in result.stderr
    result = bastion("serve", "--max-request-body-bytes", "10")
    assert result.returncode == 2 and "--max-request-body-bytes must be at least 1024" in result.stderr


async def _stream(url: str, body: dict, started: asyncio.Event | None = None) -> dict:
    """One streamed completion: its text pieces, or the error event that ended it (and when)."""
    pieces, error = 0, None
    async with httpx.AsyncClient(timeout=120) as http:
        async with http.stream("POST", f"{url}/v1/completions", json={"model": "bastion-demo", **body}) as r:
            if r.status_code != 200:
                return {"status": r.status_code, "error": json.loads(await r.aread())["error"], "at": time.monotonic()}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"]
                    break
                pieces += len(event["choices"])
                if started is not None:
                    started.set()
    return {"status": 200, "pieces": pieces, "error": error, "at": time.monotonic()}


def test_a_killed_engine_fails_its_requests_fast_and_the_other_rank_serves():
    server = ServerProcess("-dp", "2", "--dtype", "float32", "--max-rank-restarts", "0")
    try:
        async def run() -> tuple[list[dict], float]:
            events = [asyncio.Event() for _ in range(8)]
            tasks = [asyncio.create_task(_stream(server.url, {**LONG, "max_tokens": 600}, e)) for e in events]
            await asyncio.wait_for(asyncio.gather(*[e.wait() for e in events]), 120)
            engine0 = next(p for p in server.children if "engine-0" in " ".join(p.cmdline()))
            killed_at = time.monotonic()
            engine0.kill()
            return await asyncio.wait_for(asyncio.gather(*tasks), 300), killed_at
        results, killed_at = asyncio.run(run())
        failed = [r for r in results if r["error"] is not None]
        done = [r for r in results if r["error"] is None]
        assert failed and done, "requests must have been on both ranks"
        for r in failed:
            assert r["error"]["code"] == 503 and "engine rank 0 went down" in r["error"]["message"]
            assert r["at"] - killed_at < 2.0
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503
        assert health.json()["ranks"][0]["state"] == "failed" and health.json()["ranks"][1]["state"] == "ready"
        for _ in range(4):
            r = httpx.post(f"{server.url}/v1/completions", json={"model": "bastion-demo", "prompt": "A", "max_tokens": 3})
            assert r.status_code == 200
        server.signal(signal.SIGKILL)  # no orphans: the children notice and exit on their own
        server.wait(10)
        assert server.children_gone(timeout=15)
    finally:
        server.kill()


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0():
    server = ServerProcess("--enforce-eager")  # NOTE: fused, 300 tokens end before a poll sees them
    try:
        result: dict = {}

        def request() -> None:
            r = httpx.post(f"{server.url}/v1/completions", timeout=120, json={
                "model": "bastion-demo", "prompt": "The function returns", "max_tokens": 300,
                "ignore_eos": True})
            result.update(status=r.status_code, body=r.json())
        worker = threading.Thread(target=request)
        worker.start()
        assert server.wait_for_metric("bastion_num_requests_running", lambda v: v >= 1) >= 1
        server.signal(signal.SIGTERM)
        worker.join(120)
        assert result["status"] == 200 and result["body"]["usage"]["completion_tokens"] == 300
        assert server.wait(60) == 0
        assert server.children_gone()
    finally:
        server.kill()


def test_queue_bound_gives_503_and_a_second_signal_stops_at_once():
    server = ServerProcess("--max-num-seqs", "1", "--max-queued-requests", "1", "--shutdown-timeout", "300",
                           "--enforce-eager")  # NOTE: the first request must hold the slot
    try:
        async def run() -> None:
            first = asyncio.Event()
            a = asyncio.create_task(_stream(server.url, {**LONG, "max_tokens": 1900}, first))
            await asyncio.wait_for(first.wait(), 60)
            b = asyncio.create_task(_stream(server.url, {**LONG, "max_tokens": 1900}))
            waiting = await asyncio.to_thread(server.wait_for_metric, "bastion_num_requests_waiting",
                                              lambda v: v >= 1)
            assert waiting == 1
            c = await _stream(server.url, {**LONG, "max_tokens": 5})
            assert c["status"] == 503 and "--max-queued-requests 1" in c["error"]["message"]
            server.signal(signal.SIGTERM)
            await asyncio.sleep(1)
            assert server.proc.poll() is None, "still draining the two long requests"
            server.signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.wait, 30)
            assert code == 128 + signal.SIGTERM
            await asyncio.gather(a, b, return_exceptions=True)
        asyncio.run(run())
        assert server.children_gone()
    finally:
        server.kill()
