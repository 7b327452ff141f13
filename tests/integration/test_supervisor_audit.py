"""The audit log under a real supervisor (TLS with certificates made here, verified probes, API
keys): the supervisor's own endpoints are written as `"server": "supervisor"`; without
--audit-log-skip-probes its probes fill the ranks' lines, with it they leave none while every
client request (a client's own /health, one with a guessed probe header) is still written."""
from __future__ import annotations

import signal
import ssl
import time
from pathlib import Path

import httpx
import openai
import pytest
from audit_log import audit_lines as read_audit
from certs import CertAuthority
from supervisor_process import SupervisorProcess, no_rank_left

from bastion.security.audit import PROBE_HEADER

USER, OPS = "audit-user-key-uuuuuuuuuuuuuu", "audit-ops-key-oooooooooooooooo"
KEYS = f'[keys.user]\nkey = "{USER}"\nscopes = ["inference"]\n[keys.ops]\nkey = "{OPS}"\nscopes = ["metrics"]\n'
RANKS = ("rank-0/api-server-0", "rank-1/api-server-0")


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("audit-pki"))


def supervise(ca: CertAuthority, folder: Path, *extra: str) -> tuple[SupervisorProcess, ssl.SSLContext]:
    pair = ca.issue("audited-rank")
    (folder / "keys.toml").write_text(KEYS)
    verify = ssl.create_default_context(cafile=str(ca.path))
    sup = SupervisorProcess("--ssl-keyfile", str(pair.key), "--ssl-certfile", str(pair.cert),
                            "--api-key-file", str(folder / "keys.toml"), "--audit-log", str(folder / "audit.jsonl"),
                            "--dp-supervisor-probe-interval-s", "0.2", *extra, http={"verify": verify})
    return sup, verify


def audit_lines(folder: Path, predicate=lambda lines: True, timeout: float = 20.0) -> list[dict]:
    return read_audit(folder / "audit.jsonl", predicate, timeout)


def rank_health(lines: list[dict], server: str) -> list[dict]:
    return [line for line in lines if line["server"] == server and line["path"] == "/health"]


def stop(sup: SupervisorProcess) -> None:
    sup.signal(signal.SIGTERM)
    assert sup.wait(120) == 0 and no_rank_left()


def test_the_supervisors_endpoints_are_audited_and_its_probes_fill_the_ranks_lines(ca, tmp_path):
    sup, _ = supervise(ca, tmp_path)
    try:
        assert sup.get("/health").status_code == 200 and sup.get("/ready").status_code == 200
        assert sup.get("/ranks").status_code == 401
        assert sup.get("/ranks", headers={"authorization": f"Bearer {OPS}"}).status_code == 200
        mine = lambda lines: [l for l in lines if l["server"] == "supervisor"]  # noqa: E731
        lines = audit_lines(tmp_path, lambda lines: len(mine(lines)) >= 4
                            and all(len(rank_health(lines, rank)) >= 3 for rank in RANKS))
        assert [(l["method"], l["path"], l["status"], l["principal"]) for l in mine(lines)] == [
            ("GET", "/health", 200, None), ("GET", "/ready", 200, None), ("GET", "/ranks", 401, None),
            ("GET", "/ranks", 200, "ops")]
        assert all(l["api_server"] is None and l["client"] == "127.0.0.1" and l["request_id"] for l in mine(lines))
        # no client asked a rank for /health: these are the supervisor's probes, a line each
        assert all(len(rank_health(lines, rank)) >= 3 for rank in RANKS), lines
        stop(sup)
    finally:
        sup.kill()


def test_with_the_flag_probes_leave_no_rank_line_and_every_client_request_is_written(ca, tmp_path):
    sup, verify = supervise(ca, tmp_path, "--audit-log-skip-probes")
    try:
        for url in sup.rank_urls:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=USER, max_retries=0,
                                   http_client=httpx.Client(verify=verify))
            reply = client.completions.create(model="bastion-demo", prompt="Once", max_tokens=2)
            assert reply.usage.completion_tokens == 2
            assert httpx.get(f"{url}/health", verify=verify).status_code == 200
            # a client that guesses at the probe header is written like any other
            spoof = httpx.get(f"{url}/health", verify=verify, headers={PROBE_HEADER.decode(): "guessed-token"})
            assert spoof.status_code == 200
        assert sup.get("/ready").status_code == 200
        time.sleep(2)  # NOTE: ~10 more probes of each rank at 0.2 s, each of which would write a line
        assert all(row["last_probe"]["ok"] for row in sup.ranks(headers={"x-api-key": OPS}))
        lines = audit_lines(tmp_path, lambda lines: all(len(rank_health(lines, rank)) >= 2 for rank in RANKS))
        for rank in RANKS:
            assert len(rank_health(lines, rank)) == 2, rank_health(lines, rank)  # the client's two, no probe
            done = [l for l in lines if l["server"] == rank and l["path"] == "/v1/completions"]
            assert [(l["principal"], l["status"], l["completion_tokens"]) for l in done] == [("user", 200, 2)]
        assert [l["path"] for l in lines if l["server"] == "supervisor"] == ["/ready", "/ranks"]
        stop(sup)
    finally:
        sup.kill()
