"""`bastion serve -tp 2`: a rank of two worker processes serves through the openai SDK next to
another rank (-dp 2), started from a folder where another user planted `msgspec.py`, `zmq.py`
and `numpy.py`, of which no process of the server (launcher, API server, engines, their workers,
a grammar check worker, a restarted rank) imports anything; while it serves, every TCP listener
of its process tree is on loopback and nothing listens as a TCPStore; a SIGKILLed worker takes
its rank down, the rank restarts whole and serves again while the other rank never errors;
nothing is left after SIGTERM; shapes and sizes that cannot run are refused before anything
starts."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time

import httpx
import psutil
from openai import OpenAI

from planted_modules import imports_seen, plant
from server_process import ServerProcess

TCPSTORE_PORT = 29500  # torch.distributed's default MASTER_PORT


def tree(server: ServerProcess) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children(recursive=True)


def workers(server: ServerProcess) -> list[psutil.Process]:
    return [p for p in tree(server) if "bastion.engine.tensor_parallel.worker" in " ".join(p.cmdline())]


def engine_of(worker: psutil.Process) -> str:
    return next(part for part in worker.parent().cmdline() if part.startswith("engine-"))


def ss_listeners(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of each TCP socket listening in `pids`, as `ss -Hltnp` reports them."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            address, _, port = line.split()[3].rpartition(":")
            found.append((address.strip("[]"), int(port)))
    return found


def test_tp2_dp2_serves_on_loopback_imports_nothing_from_its_folder_and_a_killed_worker_restarts_its_rank(
        tmp_path):
    marker = tmp_path / "imports.log"
    shared = plant(tmp_path / "shared", marker)  # the server's working directory
    server = ServerProcess("-tp", "2", "-dp", "2", "--dtype", "float32", "--kv-cache-memory", "64MiB",
                           timeout=240, cwd=str(shared))
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        answers = [client.completions.create(model="bastion-demo", prompt=f"Once {i}", max_tokens=8,
                                             temperature=0) for i in range(8)]
        assert all(a.usage.completion_tokens == 8 for a in answers)
        chosen = client.completions.create(model="bastion-demo", prompt="Yes or no?", max_tokens=4,
                                           extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
        assert chosen.choices[0].text in ("yes", "no")  # a grammar check worker started for it
        assert not imports_seen(marker), "\n".join(imports_seen(marker))
        for rank in ("0", "1"):
            assert server.metric("bastion_rank_requests_total", rank=rank) > 0  # both ranks busy
        found = workers(server)
        assert len(found) == 2 and {engine_of(w) for w in found} == {"engine-0", "engine-1"}
        pids = {p.pid for p in tree(server)} | {server.proc.pid}
        listeners = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids]
        assert listeners and all(c.laddr.ip in ("127.0.0.1", "::1") for c in listeners), listeners
        if shutil.which("ss"):  # the same check with the tool an operator would use
            seen = ss_listeners(pids)
            assert seen and all(address in ("127.0.0.1", "::1") for address, _ in seen), seen
            assert TCPSTORE_PORT not in {port for _, port in seen}
        assert not [c for c in listeners if c.laddr.port == TCPSTORE_PORT]

        failed: list[tuple[int, str]] = []
        served = [0]
        stop = threading.Event()

        def steady_load() -> None:  # one request at a time: at most one is on rank 0 when it dies
            while not stop.is_set():
                r = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
                    "model": "bastion-demo", "prompt": "steady", "max_tokens": 16})
                if r.status_code == 200:
                    served[0] += 1
                else:
                    failed.append((r.status_code, r.text))

        loader = threading.Thread(target=steady_load, daemon=True)
        loader.start()
        victim = next(w for w in workers(server) if engine_of(w) == "engine-0")
        engine_0 = victim.parent().pid
        victim.kill()
        deadline = time.monotonic() + 2
        while psutil.pid_exists(engine_0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not psutil.pid_exists(engine_0) or psutil.Process(engine_0).status() == psutil.STATUS_ZOMBIE
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            health = httpx.get(f"{server.url}/health", timeout=10)
            if health.status_code == 200 and health.json()["ranks"][0]["restarts"] == 1:
                break
            time.sleep(0.3)
        assert health.json()["ranks"][0] == {"rank": 0, "state": "ready", "restarts": 1}
        stop.set()
        loader.join(120)
        # only requests on the killed rank failed (a 503 naming it: the one in flight, and any
        # routed there before the launcher said it was down); rank 1 served the rest throughout
        assert len(failed) <= 3 and served[0] > 0, failed
        assert all(code == 503 and "engine rank 0 went down" in text for code, text in failed), failed
        assert len(workers(server)) == 2
        assert [client.completions.create(model="bastion-demo", prompt="again", max_tokens=4).usage.completion_tokens
                for _ in range(4)] == [4] * 4
        assert not imports_seen(marker), "\n".join(imports_seen(marker))  # nor the restarted rank's
        assert server.sigterm_leaves_nothing()
    finally:
        server.kill()


def _serve_fails(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bastion.cli", "serve", *args, "--port", "0"],
                          capture_output=True, text=True, timeout=120)


def test_shapes_and_sizes_that_cannot_run_are_refused_before_anything_starts(tmp_path):
    from tiny_models import make_tiny_model
    nine_heads = make_tiny_model(tmp_path / "nine", "llama", hidden_size=72, num_attention_heads=9,
                                 num_key_value_heads=3)
    done = _serve_fails(str(nine_heads), "-tp", "2")
    assert done.returncode == 2 and "9 query heads do not divide into 2 workers" in done.stderr
    assert "3 KV heads neither divide into 2 workers" in done.stderr and "Traceback" not in done.stderr
    workers_wanted = 1 << (len(psutil.Process().cpu_affinity()) * 2 - 1).bit_length()  # > cores, 2^k
    wide = make_tiny_model(tmp_path / "wide", "llama", hidden_size=8 * workers_wanted,
                           intermediate_size=8 * workers_wanted, num_attention_heads=workers_wanted,
                           num_key_value_heads=workers_wanted)
    done = _serve_fails(str(wide), "-tp", str(workers_wanted), "--device", "cpu")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"--tensor-parallel-size {workers_wanted} needs a CPU core per worker" in done.stderr
