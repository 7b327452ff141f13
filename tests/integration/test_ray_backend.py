"""`--data-parallel-backend ray` on a real two-node Ray cluster of this machine (127.0.0.2 head,
127.0.0.3 worker, 2 CPUs each; loopback only). Each rank's engine listens on its own node's
address; a rank of two tensor-parallel workers takes both CPUs of its node, its worker beside its
engine; actors get the driver's deployment variables but not its host address or any secret;
requests are served by both ranks; a node that dies has its rank restarted on the node that is
left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
from planted_modules import imports_seen, plant
from ray_cluster import RayCluster
from server_process import ServerProcess
from test_bench_serve import _check_comparison
from test_multinode import LOOPBACK, assert_pulled_by_rank_1, health, listening, wait_for

pytest.importorskip("ray", reason="the Ray backend needs the ray extra: pip install 'bastion[ray]'")

HEAD, NODE = "127.0.0.2", "127.0.0.3"
API_KEY = "sk-ray-test-0123456789abcdef"
HF_TOKEN = "hf_secret_token_ray_test_0123456789"


# NOTE: first in the file, before the module's cluster starts: `make test` runs a file's tests
# on one worker, so no two Ray clusters ever run at once
def test_bench_serve_compares_local_ranks_with_ray_actors(tmp_path):
    pytest.importorskip("ray", reason="--compare-ray needs the ray extra: pip install 'bastion[ray]'")
    out = tmp_path / "ray.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BASTION_HOST_IP")}
    token = tmp_path / "ray_auth_token"  # NOTE: else Ray writes a new local cluster's token to ~/.ray
    token.write_text("t" * 64)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    result = subprocess.run(  # NOTE: the Ray server starts a local cluster on 127.0.0.1
        [sys.executable, "-m", "bastion.cli", "bench", "serve", "--compare-ray", "--num-requests", "8",
         "--max-tokens", "4", "--concurrency", "4", "--pairs", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())["by_concurrency"]["4"]
    _check_comparison(data, ["local", "ray"], 1, 32)
    assert all(side["ranks"] == 2 for side in data["sides"])
    assert "--data-parallel-backend" in data["sides"][1]["command"]
    assert "is ready on Ray node 127.0.0.2 at tcp://127.0.0.2:" in result.stderr  # loopback, never external


@pytest.fixture(scope="module")
def cluster():
    cluster = RayCluster({HEAD: 2, NODE: 2})  # each: room for one -tp 2 rank
    yield cluster
    cluster.stop()


def complete(url: str) -> int:
    return httpx.post(f"{url}/v1/completions", timeout=60, headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": "bastion-demo", "prompt": "Once", "max_tokens": 3}).status_code


def test_ranks_the_cluster_cannot_fit_fail_the_start_saying_what_was_asked_and_what_exists(cluster):
    cmd = [sys.executable, "-m", "bastion.cli", "serve", "--port", "0", "-dp", "3", "--data-parallel-backend",
           "ray", "--ray-placement-strategy", "strict-pack"]
    env = {**os.environ, **cluster.driver_env(), "BASTION_HOST_IP": HEAD}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 1
    assert ("the Ray cluster cannot fit 3 ranks of {CPU: 1, GPU: 0} each with --ray-placement-strategy "
            "strict-pack; it has 127.0.0.2: CPU 2, GPU 0; 127.0.0.3: CPU 2, GPU 0") in done.stderr
    assert not cluster.nodes[HEAD].processes(r"bastion\.launch\.child|^ray::RankActor")


def test_disaggregated_tp2_ranks_one_per_ray_node_pull_kv_over_their_own_addresses(cluster, tmp_path):
    """Rank 0 prefills, rank 1 decodes, each of two tensor-parallel workers: a rank's bundle holds
    both workers' CPUs, so each node has room for one rank and even `pack` (the default) puts one
    on each node, its worker a child of its engine there. Each engine (KV listener included)
    listens on its own node's address (gloo: loopback); the driver's BASTION_HOST_IP reaches no
    actor. The driver starts in a folder with planted modules (Ray puts a driver's working
    directory on its workers' path): no actor, engine or worker imports them.
    NOTE: before the node-death test below, which leaves the cluster one node short."""
    marker = tmp_path / "imports.log"
    server = ServerProcess("-dp", "2", "-tp", "2", "--prefill-ranks", "1", "--data-parallel-backend", "ray",
                           env={**cluster.driver_env(), "BASTION_HOST_IP": HEAD}, timeout=240,
                           cwd=str(plant(tmp_path / "shared", marker)))
    try:
        assert not imports_seen(marker), "\n".join(imports_seen(marker))
        head, node = cluster.nodes[HEAD], cluster.nodes[NODE]
        [head_engine] = head.processes(r"bastion\.launch\.child engine-")
        [node_engine] = node.processes(r"bastion\.launch\.child engine-")
        for ray_node, engine in ((head, head_engine), (node, node_engine)):
            [worker] = ray_node.processes(r"bastion\.engine\.tensor_parallel\.worker")
            assert worker.parent().pid == engine.pid
            assert ray_node.ip in listening(engine) and listening(engine) <= {ray_node.ip, LOOPBACK}
            assert listening(worker) <= {LOOPBACK}
        prefill, ip = next((p, ip) for p, ip in ((head_engine, HEAD), (node_engine, NODE))
                           if "engine-0" in " ".join(p.cmdline()))
        assert len([c for c in prefill.net_connections(kind="tcp")
                    if c.status == "LISTEN" and c.laddr.ip == ip]) == 2  # input + KV
        for proc in [*head.processes(r"^ray::RankActor"), *node.processes(r"^ray::RankActor"), head_engine,
                     node_engine]:
            assert "BASTION_HOST_IP" not in proc.environ()
        assert_pulled_by_rank_1(server, 6)
    finally:
        server.kill()


def test_ray_ranks_on_their_nodes_with_clean_environments_and_a_node_death(cluster):
    driver_env = {**cluster.driver_env(), "BASTION_HOST_IP": HEAD, "BASTION_API_KEY": API_KEY,
                  "HF_TOKEN": HF_TOKEN, "HF_HUB_OFFLINE": "1", "BASTION_RAY_TEST_MARK": "propagated"}
    server = ServerProcess("-dp", "2", "--data-parallel-backend", "ray", "--ray-placement-strategy", "spread",
                           "--max-rank-restarts", "3", env=driver_env,
                           http={"headers": {"Authorization": f"Bearer {API_KEY}"}})
    try:
        head, node = cluster.nodes[HEAD], cluster.nodes[NODE]
        [head_engine] = head.processes(r"bastion\.launch\.child engine-")
        [node_engine] = node.processes(r"bastion\.launch\.child engine-")
        assert listening(head_engine) == {HEAD} and listening(node_engine) == {NODE}

        actors = head.processes(r"^ray::RankActor") + node.processes(r"^ray::RankActor")
        assert len(actors) == 2
        for proc in [*actors, head_engine, node_engine]:
            env = proc.environ()
            assert env.get("BASTION_RAY_TEST_MARK") == "propagated" and env.get("HF_HUB_OFFLINE") == "1"
            assert "BASTION_HOST_IP" not in env  # the driver's address stays with the driver
            assert not any(secret in value for value in env.values() for secret in (API_KEY, HF_TOKEN))
        assert all(API_KEY not in " ".join(p.cmdline()) for p in [*actors, head_engine, node_engine])

        assert [complete(server.url) for _ in range(8)] == [200] * 8
        assert server.metric("bastion_rank_requests_total", rank="0") > 0
        assert server.metric("bastion_rank_requests_total", rank="1") > 0
        node_rank = next(r for r in (0, 1) if f"engine-{r}" in " ".join(node_engine.cmdline()))

        node.kill()  # the node dies: its rank goes down and comes back on the head node
        assert wait_for(lambda: health(server.url)["ranks"][node_rank]["state"] != "ready", timeout=60)
        assert "died" in health(server.url)["ranks"][node_rank]["reason"]
        assert complete(server.url) == 200  # the other rank serves meanwhile
        assert wait_for(lambda: health(server.url)["status"] == "ok", timeout=120), health(server.url)
        assert health(server.url)["ranks"][node_rank]["restarts"] == 1
        moved = head.processes(rf"bastion\.launch\.child engine-{node_rank}\b")
        assert len(moved) == 1 and listening(moved[0]) == {HEAD}
        served = server.metric("bastion_rank_requests_total", rank=str(node_rank))
        assert [complete(server.url) for _ in range(8)] == [200] * 8
        assert server.metric("bastion_rank_requests_total", rank=str(node_rank)) > served

        [engine] = head.processes(rf"bastion\.launch\.child engine-{1 - node_rank}\b")
        engine.kill()  # a dead engine under a live actor restarts too
        assert wait_for(lambda: health(server.url)["ranks"][1 - node_rank]["restarts"] == 1, timeout=60)
        assert wait_for(lambda: health(server.url)["status"] == "ok", timeout=120), health(server.url)
        assert "exited with code -9" in "".join(server.stderr)

        server.signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert wait_for(lambda: not head.processes(r"bastion\.launch\.child engine-"), timeout=30)
    finally:
        server.kill()

