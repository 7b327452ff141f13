"""Ranks on two "nodes" of one machine (loopback addresses 127.0.0.2 and 127.0.0.3, never the
external interface): a head with rank 0 and API servers, a headless node with rank 1 that
registers over CurveZMQ. Requests are balanced over both; a node without the secret is refused;
a killed node's rank goes down while the head serves on, and comes back when it restarts; with
-tp 2 each rank's workers run on its own node."""
from __future__ import annotations

import signal
import time

import httpx
import psutil
import pytest
from server_process import ServerProcess

from bastion.bench.harness import HEADLESS, ServeProcess
from bastion.bench.ports import free_port_block

HEAD, NODE = "127.0.0.2", "127.0.0.3"
LOOPBACK = "127.0.0.1"  # where a rank's tensor-parallel workers meet (gloo), on every node
TP_WORKER = "bastion.engine.tensor_parallel.worker"


class HeadlessNode(ServeProcess):
    """`bastion serve --headless` for rank 1 of 2, waiting for its ready line."""

    def __init__(self, port: int, secret, address: str = NODE, extra: tuple[str, ...] = ()) -> None:
        super().__init__(["--headless", "-dp", "2", "-dpr", "1", "-dpl", "1", "-dpa", HEAD, "-dpp", str(port),
                          "--internal-secret-file", str(secret), *extra], HEADLESS, log_level="warning",
                         env={"BASTION_HOST_IP": address})
        self.family: list[psutil.Process] = []
        line = self.wait_ready(180, "headless node").string
        assert "headless node serving ranks 1..1" in line, "".join(self.stderr)[-3000:]
        self.family = psutil.Process(self.proc.pid).children(recursive=True)

    def engine(self) -> psutil.Process:
        return next(p for p in self.family if "engine-1" in " ".join(p.cmdline()))

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)
        for proc in self.family:
            if proc.is_running():
                proc.kill()
        psutil.wait_procs(self.family, timeout=10)


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.2)
    return predicate()


def complete(url: str) -> int:
    return httpx.post(f"{url}/v1/completions", timeout=60,
                      json={"model": "bastion-demo", "prompt": "Once", "max_tokens": 3}).status_code


def assert_pulled_by_rank_1(server: ServerProcess, count: int) -> None:
    """`count` completions of 6 tokens answered, each one's KV pulled by rank 1 (no fallback)."""
    answers = [httpx.post(f"{server.url}/v1/completions", timeout=60, json={
        "model": "bastion-demo", "prompt": f"Once {i}", "max_tokens": 6, "ignore_eos": True}) for i in range(count)]
    assert [a.status_code for a in answers] == [200] * count
    assert all(a.json()["usage"]["completion_tokens"] == 6 for a in answers)
    assert server.metric("bastion_kv_transfers_total", rank="1") == count
    assert server.metric("bastion_kv_transfer_fallbacks_total", rank="1") == 0


def listening(proc: psutil.Process) -> set[str]:
    return {c.laddr.ip for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


@pytest.fixture()
def secrets(tmp_path):
    good, wrong = tmp_path / "internal.secret", tmp_path / "other.secret"
    good.write_text("g" * 48)
    wrong.write_text("w" * 48)
    return good, wrong


def test_a_headless_node_registers_serves_leaves_and_returns(secrets):
    good, wrong = secrets
    port = free_port_block(1, HEAD)
    head = ServerProcess("-dp", "2", "-dpl", "1", "-dpa", HEAD, "-dpp", str(port), "--internal-secret-file",
                         str(good), env={"BASTION_HOST_IP": HEAD})
    nodes: list[HeadlessNode] = []
    try:
        assert health(head.url)["ranks"][1]["state"] == "waiting"
        assert complete(head.url) == 200  # rank 0 serves while rank 1's node is away
        stranger = HeadlessNode(port, wrong)
        nodes.append(stranger)
        assert wait_for(lambda: "refused a peer at the registration port" in "".join(head.stderr))
        assert health(head.url)["ranks"][1]["state"] == "waiting"
        stranger.stop()

        node = HeadlessNode(port, good)
        nodes.append(node)
        assert wait_for(lambda: health(head.url)["status"] == "ok")
        head_engine = next(p for p in head.children if "engine-0" in " ".join(p.cmdline()))
        assert listening(head_engine) == {HEAD} and listening(node.engine()) == {NODE}
        assert "BASTION_HOST_IP" not in " ".join(node.engine().cmdline())
        assert [complete(head.url) for _ in range(8)] == [200] * 8
        assert head.metric("bastion_rank_requests_total", rank="0") > 0
        assert head.metric("bastion_rank_requests_total", rank="1") > 0

        node.proc.kill()  # the node dies: its rank goes down, the head serves on
        assert wait_for(lambda: health(head.url)["ranks"][1]["state"] == "restarting", timeout=30)
        assert "stopped answering" in health(head.url)["ranks"][1]["reason"]
        assert [complete(head.url) for _ in range(4)] == [200] * 4
        node.stop()

        again = HeadlessNode(port, good)
        nodes.append(again)
        assert wait_for(lambda: health(head.url)["status"] == "ok")
        assert health(head.url)["ranks"][1]["restarts"] == 1
        served = head.metric("bastion_rank_requests_total", rank="1")
        assert [complete(head.url) for _ in range(8)] == [200] * 8
        assert head.metric("bastion_rank_requests_total", rank="1") > served
        again.stop()  # a goodbye: the head marks the rank down at once
        assert wait_for(lambda: health(head.url)["ranks"][1]["state"] != "ready", timeout=10)
        assert "stopped" in health(head.url)["ranks"][1]["reason"]
        head.signal(signal.SIGTERM)
        assert head.wait(60) == 0
    finally:
        for node in nodes:
            node.stop()
        head.kill()


def test_a_prefill_head_and_a_decode_node_of_tp2_ranks_pull_kv_between_their_own_addresses(secrets):
    """The head's rank 0 prefills, the headless node's rank 1 (--kv-role decode) pulls the KV
    from the head's KV listener, which is on the head's address like its other listeners. Both
    ranks are of two tensor-parallel workers: each rank's second worker is a child of its engine,
    itself a child of its own node's launcher, and listens on loopback only (gloo)."""
    good, _ = secrets
    port = free_port_block(1, HEAD)
    head = ServerProcess("-dp", "2", "-dpl", "1", "-dpa", HEAD, "-dpp", str(port), "--internal-secret-file",
                         str(good), "--kv-role", "prefill", "-tp", "2", env={"BASTION_HOST_IP": HEAD})
    node = None
    try:
        node = HeadlessNode(port, good, extra=("--kv-role", "decode", "-tp", "2"))
        assert wait_for(lambda: health(head.url)["status"] == "ok")
        head_engine = next(p for p in head.children if "engine-0" in " ".join(p.cmdline()))
        for launcher, engine, ip in ((head.proc.pid, head_engine, HEAD), (node.proc.pid, node.engine(), NODE)):
            assert engine.parent().pid == launcher
            [worker] = [p for p in engine.children() if TP_WORKER in " ".join(p.cmdline())]
            assert ip in listening(engine) and listening(engine) <= {ip, LOOPBACK}
            assert listening(worker) <= {LOOPBACK}
        assert len([c for c in head_engine.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN and c.laddr.ip == HEAD]) == 2  # input + KV
        assert_pulled_by_rank_1(head, 6)
    finally:
        if node is not None:
            node.stop()
        head.kill()
