"""The audit trail's probe rule and the supervisor's audit: a request leaves no line only when it
is a `GET /health` presenting the supervisor's probe token; every other request, a guessed token
included, is written. The app runs behind the real AuditTrail with a real log file."""
from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bastion.cli import main
from bastion.security.audit import PROBE_HEADER, AuditLog, ProbeToken, is_probe
from bastion.server.http.middleware import AuditTrail

HEADER = PROBE_HEADER.decode()


def scope(path: str = "/health", method: str = "GET", headers: dict[str, str] | None = None) -> dict:
    return {"type": "http", "method": method, "path": path,
            "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()]}


def test_only_a_get_of_health_with_the_token_is_a_probe():
    token = ProbeToken.new()
    assert is_probe(scope(headers={HEADER: token.token}), token.sha256)
    assert not is_probe(scope(headers={HEADER: token.token}), None)  # no --audit-log-skip-probes
    assert not is_probe(scope(headers={HEADER: "guessed"}), token.sha256)
    assert not is_probe(scope(headers={HEADER: token.sha256}), token.sha256)  # the digest is no token
    assert not is_probe(scope(), token.sha256)
    assert not is_probe(scope("/v1/completions", "POST", {HEADER: token.token}), token.sha256)
    assert not is_probe(scope("/ready", headers={HEADER: token.token}), token.sha256)
    assert ProbeToken.new().token != token.token


def app_with_trail(log: AuditLog, token: ProbeToken | None) -> TestClient:
    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
    app.get("/v1/models")(lambda: {"data": []})
    app.add_middleware(AuditTrail, log=log, api_server=0, server="rank-1/api-server-0",
                       skip_probe_sha256=token.sha256 if token else None)
    return TestClient(app)


@pytest.mark.parametrize("skip", [True, False])
def test_probe_lines_are_dropped_only_when_asked(tmp_path, skip):
    token = ProbeToken.new()
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    client = app_with_trail(log, token if skip else None)
    assert client.get("/health", headers={HEADER: token.token}).status_code == 200  # the supervisor's
    client.get("/health", headers={HEADER: "a-client-guessing"})
    client.get("/health")
    client.get("/v1/models", headers={HEADER: token.token})  # the token hides nothing but GET /health
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert all(line["server"] == "rank-1/api-server-0" and line["api_server"] == 0 for line in lines)
    assert [line["path"] for line in lines] == ["/health"] * (2 if skip else 3) + ["/v1/models"]


def test_the_flag_needs_the_supervisor_and_an_audit_log(capsys, tmp_path):
    assert main(["serve", "--audit-log-skip-probes", "--audit-log", str(tmp_path / "a")]) == 2
    assert "--audit-log-skip-probes needs --data-parallel-multi-port-external-lb" in capsys.readouterr().err
    assert main(["serve", "--data-parallel-multi-port-external-lb", "-dp", "2", "--port", "18300",
                 "--audit-log-skip-probes"]) == 2
    assert "--audit-log-skip-probes needs --audit-log" in capsys.readouterr().err


def test_ranks_get_the_token_digest_and_never_the_token(tmp_path):
    from bastion.args.serve import serve_config
    from bastion.cli import build_parser
    from bastion.launch.supervisor.supervisor import rank_config

    config = serve_config(build_parser().parse_args([
        "serve", "--data-parallel-multi-port-external-lb", "-dp", "2", "--port", "18300",
        "--audit-log", str(tmp_path / "a"), "--audit-log-skip-probes"]))
    token = ProbeToken.new()
    rank = rank_config(config, 1, token)
    assert rank.security.audit_skip_probe_sha256 == token.sha256
    assert token.token not in repr(rank)
    assert rank_config(config, 1).security.audit_skip_probe_sha256 is None


def test_the_supervisor_app_writes_every_request_as_the_supervisor(tmp_path):
    from types import SimpleNamespace

    from bastion.config.security import SecurityConfig
    from bastion.launch.supervisor.app import build_supervisor_app
    from bastion.security.auth import Authenticator
    from bastion.security.keys import secret_keys

    log = AuditLog(str(tmp_path / "audit.jsonl"))
    view = SimpleNamespace(phase="serving", slots=[], ready_ranks_needed=1)
    client = TestClient(build_supervisor_app(view, Authenticator(SecurityConfig(extra_keys=secret_keys("k" * 24, "ops"))), log))
    assert client.get("/health").status_code == 200 and client.get("/ranks").status_code == 401
    client.get("/ready")
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(line["path"], line["status"]) for line in lines] == [("/health", 200), ("/ranks", 401), ("/ready", 503)]
    assert {(line["server"], line["api_server"]) for line in lines} == {("supervisor", None)}
