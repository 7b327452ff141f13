"""The multi-port external load-balancing mode, end to end: real ranks on the demo model, one per
port, under a real supervisor; clients are the openai SDK, httpx and real TLS certificates made
here. Every test ends with no rank process left."""
from __future__ import annotations

import signal
import socket
import ssl
import threading
import time

import httpx
import openai
import psutil
import pytest
from certs import CertAuthority
from supervisor_process import SupervisorProcess, no_rank_left
from tls_server import tls_server

from bastion.bench.ports import free_port_block
from bastion.config.security import TlsConfig

USER, METERED, OPS = "user-key-uuuuuuuuuuuuuuuuuu", "metered-key-mmmmmmmmmmmmmm", "ops-key-oooooooooooooooooo"
FROM_ENV = "env-key-eeeeeeeeeeeeeeeeeeee"
KEYS = f"""
[keys.user]
key = "{USER}"
scopes = ["inference"]

[keys.metered]
key = "{METERED}"
scopes = ["inference"]
requests_per_minute = 3

[keys.ops]
key = "{OPS}"
scopes = ["metrics"]
"""


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("supervisor-pki"))


def tls_client(ca: CertAuthority, pair=None) -> ssl.SSLContext:
    """A client context that trusts `ca` and presents `pair` (mutual TLS) when given."""
    context = ssl.create_default_context(cafile=str(ca.path))
    if pair is not None:
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


def complete(url: str, key: str = "unused", **client_options) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, **client_options)
    reply = client.completions.create(model="bastion-demo", prompt="Once upon", max_tokens=4,
                                      extra_body={"ignore_eos": True})
    return reply.choices[0].finish_reason


def stream_to_end(url: str, key: str, results: list, started: threading.Event) -> None:
    """Stream 48 tokens; record (completion tokens, finish reason) or the error."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    finish, tokens = None, None
    try:
        for chunk in client.completions.create(model="bastion-demo", prompt="Once", max_tokens=48,
                                               stream=True, stream_options={"include_usage": True},
                                               extra_body={"ignore_eos": True}):
            started.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        results.append((tokens, finish))
    except Exception as exc:  # noqa: BLE001 - the assertion reports it
        results.append((tokens, repr(exc)))
        started.set()


def descendants(sup: SupervisorProcess) -> list[psutil.Process]:
    return psutil.Process(sup.proc.pid).children(recursive=True)


def test_plain_ranks_serve_the_api_share_limits_and_drain_together_on_sigterm(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    sup = SupervisorProcess("--api-key-file", str(keys), "--dp-supervisor-probe-interval-s", "0.5",
                            http={"headers": {"x-api-key": OPS}}, env={"BASTION_API_KEY": FROM_ENV})
    try:
        # the key from the environment works on every rank, yet no rank process holds it
        assert all(complete(url, FROM_ENV) == "length" for url in sup.rank_urls)
        for proc in descendants(sup):
            assert FROM_ENV not in " ".join(proc.cmdline()) and FROM_ENV not in str(proc.environ())
        assert sup.rank_urls == [f"http://127.0.0.1:{sup.port}", f"http://127.0.0.1:{sup.port + 1}"]
        for url in sup.rank_urls:
            assert complete(url, USER) == "length"
            with pytest.raises(openai.AuthenticationError):
                complete(url, "wrong-key-000000000000000")
        assert httpx.get(f"{sup.url}/health").status_code == 200
        ready = httpx.get(f"{sup.url}/ready")
        assert ready.status_code == 200 and ready.json()["ready_ranks"] == 2
        assert httpx.get(f"{sup.url}/ranks").status_code == 401
        assert sup.get("/ranks", headers={"x-api-key": USER}).status_code == 403
        rows = sup.ranks()
        assert [(r["rank"], r["state"], r["restarts"], r["last_probe"]["ok"]) for r in rows] == \
            [(0, "ready", 0, True), (1, "ready", 0, True)]
        # limits hold across ranks: 3 requests a minute, wherever they land
        assert [complete(url, METERED) for url in (sup.rank_urls[0], sup.rank_urls[1], sup.rank_urls[0])] \
            == ["length"] * 3
        with pytest.raises(openai.RateLimitError):
            complete(sup.rank_urls[1], METERED)
        # SIGTERM: a stream on each rank finishes, then everything exits 0
        family = descendants(sup)
        results: list = []
        started = [threading.Event() for _ in sup.rank_urls]
        streams = [threading.Thread(target=stream_to_end, args=(url, USER, results, event))
                   for url, event in zip(sup.rank_urls, started)]
        for thread in streams:
            thread.start()
        assert all(event.wait(60) for event in started)
        sup.signal(signal.SIGTERM)
        for thread in streams:
            thread.join(120)
        assert sorted(results) == [(48, "length"), (48, "length")]
        assert sup.wait(120) == 0
        _, alive = psutil.wait_procs(family, timeout=15)
        assert not alive and no_rank_left()
    finally:
        sup.kill()


def test_one_node_of_several_supervises_its_own_ranks_on_its_own_ports():
    sup = SupervisorProcess("-dp", "4", "-dpl", "2", "-dpr", "2", "--dp-supervisor-probe-interval-s", "0.5")
    try:
        assert "supervising 2 ranks (2..3 of 4)" in "".join(sup.stdout)
        assert sup.rank_urls == [f"http://127.0.0.1:{sup.port}", f"http://127.0.0.1:{sup.port + 1}"]
        rows = sup.ranks()
        assert [(r["rank"], r["state"], r["url"]) for r in rows] == \
            [(2, "ready", sup.rank_urls[0]), (3, "ready", sup.rank_urls[1])]
        assert all(complete(url) == "length" for url in sup.rank_urls)
        assert any("rank-3/engine-0" in " ".join(p.cmdline()) for p in descendants(sup))
        sup.signal(signal.SIGTERM)
        assert sup.wait(120) == 0 and no_rank_left()
    finally:
        sup.kill()


def test_tls_ranks_and_supervisor_with_pinned_probes(ca):
    server = ca.issue("supervised-rank")
    verify = {"verify": tls_client(ca)}
    sup = SupervisorProcess("--ssl-keyfile", str(server.key), "--ssl-certfile", str(server.cert),
                            "--dp-supervisor-probe-interval-s", "0.5", http=verify)
    try:
        assert sup.url.startswith("https://") and all(u.startswith("https://") for u in sup.rank_urls)
        for url in sup.rank_urls:
            assert complete(url, http_client=httpx.Client(**verify)) == "length"
        assert sup.get("/ready").status_code == 200
        assert all(row["state"] == "ready" and row["last_probe"]["ok"] for row in sup.ranks())
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{sup.url}/health")  # the client checks the supervisor's certificate too
        family = descendants(sup)
        sup.signal(signal.SIGTERM)
        assert sup.wait(120) == 0
        _, alive = psutil.wait_procs(family, timeout=15)
        assert not alive and no_rank_left()
    finally:
        sup.kill()


def test_mutual_tls_probes_pass_an_impostor_fails_and_a_killed_supervisor_takes_every_rank(ca, tmp_path):
    server, probe_client = ca.issue("mtls-rank"), ca.issue("probe-client", client=True)
    impostor = CertAuthority(tmp_path / "impostor", name="impostor CA").issue("impostor")
    mtls = {"verify": tls_client(ca, probe_client)}
    args = ["--ssl-keyfile", str(server.key), "--ssl-certfile", str(server.cert), "--ssl-ca-certs", str(ca.path),
            "--ssl-cert-reqs", "required", "--ssl-client-certfile", str(probe_client.cert),
            "--ssl-client-keyfile", str(probe_client.key), "--dp-supervisor-probe-interval-s", "0.5",
            "--min-ready-ranks", "1", "--max-rank-restarts", "30", "--shutdown-timeout", "60"]
    port = free_port_block(2)
    impostor_tls = TlsConfig(keyfile=str(impostor.key), certfile=str(impostor.cert))
    with tls_server(impostor_tls, port=port + 1):  # something else answers on rank 1's port
        sup = SupervisorProcess(*args, port=port, http=mtls)
        try:
            row = sup.wait_for_rank(1, lambda r: "CERTIFICATE_VERIFY_FAILED" in
                                    ((r.get("last_probe") or {}).get("error") or ""), timeout=60)
            assert row["state"] != "ready"
            assert sup.ranks()[0]["state"] == "ready"  # its probes pass with the client certificate
            assert httpx.get(f"{sup.url}/ready", **mtls).status_code == 200  # 1 of 1 needed
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"{sup.url}/ready", verify=tls_client(ca))  # no client certificate
            idle = httpx.Client(**mtls)  # its keep-alive connection stays open, never answering a close
            assert complete(sup.rank_urls[0], http_client=idle) == "length"
            family = descendants(sup)
            sup.proc.kill()  # SIGKILL: every rank notices its closed pipe and drains on its own
            sup.wait(10)
            # NOTE: well before --shutdown-timeout 60: the idle TLS client does not hold the drain
            _, alive = psutil.wait_procs(family, timeout=20)
            assert not alive and no_rank_left(5)
        finally:
            sup.kill()


def test_killed_and_hung_ranks_restart_while_the_other_serves_without_errors():
    sup = SupervisorProcess("--dp-supervisor-probe-interval-s", "0.5", "--dp-supervisor-probe-timeout-s", "1",
                            "--dp-supervisor-probe-failure-threshold", "2")
    stop, outcomes = threading.Event(), []

    def steady_traffic() -> None:
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline and len(outcomes) < 2000:
            try:
                complete(sup.rank_urls[0])
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001 - counted as an error below
                outcomes.append(repr(exc))
    traffic = threading.Thread(target=steady_traffic)
    try:
        traffic.start()
        first = sup.ranks()[1]
        psutil.Process(first["pid"]).kill()
        sup.wait_for_rank(1, lambda r: r["state"] != "ready", timeout=10)
        back = sup.wait_for_rank(1, lambda r: r["state"] == "ready" and r["restarts"] == 1)
        assert back["pid"] != first["pid"]
        assert complete(sup.rank_urls[1]) == "length"
        # a hung rank (its API server stopped) fails its probes, is killed whole and restarted
        api = next(p for p in psutil.Process(back["pid"]).children() if "api-server" in " ".join(p.cmdline()))
        api.suspend()
        hung = sup.wait_for_rank(1, lambda r: "probes in a row" in (r["reason"] or ""), timeout=30)
        assert hung["state"] in ("unhealthy", "restarting", "starting")
        sup.wait_for_rank(1, lambda r: r["state"] == "ready" and r["restarts"] == 2)
        assert not api.is_running() or api.status() == psutil.STATUS_ZOMBIE
        stop.set()
        traffic.join(60)
        errors = [o for o in outcomes if o is not None]
        assert outcomes and not errors, errors[:3]
        # a second signal cuts a stuck drain short
        family = descendants(sup)
        stuck = next(p for p in psutil.Process(sup.ranks()[0]["pid"]).children()
                     if "api-server" in " ".join(p.cmdline()))
        stuck.suspend()
        sup.signal(signal.SIGTERM)
        time.sleep(1.0)
        assert sup.proc.poll() is None  # still draining
        sup.signal(signal.SIGTERM)
        assert sup.wait(30) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(family, timeout=15)
        assert not alive and no_rank_left()
    finally:
        stop.set()
        sup.kill()


def test_a_rank_that_crashes_at_every_start_is_failed_and_the_supervisor_exits_1():
    port = free_port_block(2)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port + 1))  # rank 1's port is taken
    squatter.listen()
    try:
        sup = SupervisorProcess("--max-rank-restarts", "2", "--dp-supervisor-probe-interval-s", "0.5",
                                port=port, wait_ready=False)
        try:
            assert sup.wait(180) == 1
            log = sup.log()
            assert "rank 1 exited with code 2" in log and "restarting it in 1 s" in log
            assert "restarting it in 2 s" in log
            assert f"cannot listen on 127.0.0.1:{port + 1} (--host/--port)" in log
            assert "rank 1 failed" in log and "out of restarts (2 within 600 s" in log
            assert "fewer than --min-ready-ranks 2" in log
            assert no_rank_left()
        finally:
            sup.kill()
    finally:
        squatter.close()


def test_ranks_not_ready_by_the_start_up_timeout_stop_everything_with_the_reason(ca, tmp_path):
    server = ca.issue("timeout-rank")
    stranger = CertAuthority(tmp_path / "other", name="other CA").issue("stranger", client=True)
    sup = SupervisorProcess("--ssl-keyfile", str(server.key), "--ssl-certfile", str(server.cert),
                            "--ssl-ca-certs", str(ca.path), "--ssl-cert-reqs", "required",
                            "--ssl-client-certfile", str(stranger.cert), "--ssl-client-keyfile",
                            str(stranger.key), "--dp-supervisor-probe-interval-s", "0.5",
                            "--dp-supervisor-startup-timeout-s", "12", wait_ready=False)
    try:
        assert sup.wait(120) == 1
        log = sup.log()
        assert "ranks not ready within 12 s (--dp-supervisor-startup-timeout-s)" in log
        assert "rank 0 (https://127.0.0.1:" in log and "rank 1 (https://127.0.0.1:" in log
        assert "last probe:" in log and "its last log lines:" in log
        assert no_rank_left()
    finally:
        sup.kill()
