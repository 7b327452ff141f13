"""A real secured server: HTTPS with verified certificates, named keys, JWTs, scopes, limits
shared by two API-server processes, the audit log, key rotation, tenant cache isolation, and
no secret in argv, environments, logs, responses or metrics."""
from __future__ import annotations

import contextlib
import json
import signal
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import openai
import psutil
import pytest

from certs import CertAuthority
from server_process import ServerProcess

ALICE, ALICE2, BOB = "alice-key-aaaaaaaaaaaaaaaa", "alice2-key-aaaaaaaaaaaaaaa", "bob-key-bbbbbbbbbbbbbbbbbb"
OPS, LIMITED, TPM = "ops-key-oooooooooooooooooo", "limited-key-llllllllllllll", "tpm-key-tttttttttttttttttt"
SINGLE, ROT_OLD, ROT_NEW = "single-key-ssssssssssssss", "rot-old-key-rrrrrrrrrrrrr", "rot-new-key-nnnnnnnnnnnnn"
ENV_KEY = "env-key-eeeeeeeeeeeeeeeeeeee"
JWT_SECRET = "jwt-secret-" + "j" * 40
LIMITED_RPM = 5

KEYS = """
[keys.alice]
key = "{ALICE}"
tenant = "acme"
models = ["demo"]
[keys.alice2]
key = "{ALICE2}"
tenant = "acme"
[keys.bob]
key = "{BOB}"
tenant = "globex"
[keys.ops]
key = "{OPS}"
scopes = ["metrics", "admin"]
[keys.limited]
key = "{LIMITED}"
requests_per_minute = {LIMITED_RPM}
[keys.tpm]
key = "{TPM}"
tokens_per_minute = 200
[keys.single]
key = "{SINGLE}"
max_concurrent_requests = 1
[keys.rotating]
key = "{ROTATING}"
"""


def key_file(rotating: str) -> str:
    return KEYS.format(**{**globals(), "ROTATING": rotating})


class Secured:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertAuthority(root / "pki")
        self.server_cert = self.ca.issue("server")
        self.verify = ssl.create_default_context(cafile=str(self.ca.path))
        self.keys = root / "keys.toml"
        self.keys.write_text(key_file(ROT_OLD))
        (root / "jwt.secret").write_text(JWT_SECRET)
        self.audit = root / "audit.log"
        self.proc = ServerProcess(
            "--api-server-count", "2", "--served-model-name", "demo", "other",
            "--ssl-keyfile", str(self.server_cert.key), "--ssl-certfile", str(self.server_cert.cert),
            "--ssl-ca-certs", str(self.ca.path), "--ssl-cert-reqs", "optional",
            "--api-key-file", str(self.keys), "--jwt-secret-file", str(root / "jwt.secret"),
            "--jwt-issuer", "issuer", "--jwt-audience", "bastion", "--audit-log", str(self.audit),
            "--max-concurrent-requests", "4", "--max-waiting-requests", "2",
            "--enforce-eager",  # NOTE: an abandoned stream must still be running when it is aborted
            env={"BASTION_API_KEY": ENV_KEY},
            http={"verify": self.verify, "headers": {"x-api-key": OPS}})
        self.url = self.proc.url

    def client(self, key: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, verify=self.verify, headers=headers, timeout=60, **kw)

    def complete(self, key: str, **body) -> httpx.Response:
        with self.client(key) as c:
            return c.post("/v1/completions", json={"model": "demo", "prompt": "Once upon a time",
                                                   "max_tokens": 4, **body})

    def audit_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = Secured(tmp_path_factory.mktemp("secured"))
    yield server
    server.proc.kill()


def token(**claims) -> str:
    now = int(time.time())
    claims = {"sub": "svc-1", "iss": "issuer", "aud": "bastion", "exp": now + 300, **claims}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def test_openai_sdk_over_verified_tls(srv):
    assert srv.url.startswith("https://127.0.0.1:")
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=ALICE,
                           http_client=httpx.Client(verify=srv.verify))
    reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens == 4
    with pytest.raises(httpx.ConnectError):  # an unverified peer is refused by the client
        httpx.get(f"{srv.url}/health", verify=True)


def test_who_may_call_what(srv):
    with srv.client() as anon:
        for path in ("/health", "/version"):
            assert anon.get(path).status_code == 200
        reply = anon.get("/v1/models")
        assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer")
        assert reply.json()["error"]["type"] == "authentication_error"
        assert anon.get("/no-such-route").status_code == 401
        assert anon.get("/v1/models", headers={"x-api-key": ALICE}).status_code == 200
        assert anon.get("/v1/models", headers={"Authorization": f"bEaReR {ALICE}"}).status_code == 200
        assert anon.get("/v1/models", headers={"Authorization": "Bearer wrong-key"}).status_code == 401
    with srv.client(ALICE) as alice:
        assert alice.get("/no-such-route").status_code == 404
        assert [m["id"] for m in alice.get("/v1/models").json()["data"]] == ["demo"]
        for path in ("/metrics", "/server_info"):
            assert alice.get(path).status_code == 403
        assert alice.post("/admin/reload-credentials").status_code == 403
        other = alice.post("/v1/completions", json={"model": "other", "prompt": "x", "max_tokens": 1})
        assert other.status_code == 403 and other.json()["error"]["param"] == "model"
    with srv.client(BOB) as bob:
        assert bob.post("/v1/completions", json={"model": "other", "prompt": "x", "max_tokens": 1}).status_code == 200
    with srv.client(OPS) as ops:
        assert ops.get("/metrics").status_code == 200
        assert ops.post("/v1/completions", json={"model": "demo", "prompt": "x"}).status_code == 403
    sdk = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="wrong-key", http_client=httpx.Client(verify=srv.verify))
    with pytest.raises(openai.AuthenticationError):
        sdk.models.list()
    sdk = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=OPS, http_client=httpx.Client(verify=srv.verify))
    with pytest.raises(openai.PermissionDeniedError):
        sdk.completions.create(model="demo", prompt="x", max_tokens=1)


def test_environment_key_and_jwt(srv):
    assert srv.complete(ENV_KEY).status_code == 200
    good = token(tenant="t-jwt", scope="inference")
    assert srv.complete(good).status_code == 200
    now = int(time.time())
    for bad in (token(exp=now - 600), token(iss="someone-else"), token(aud="other"), token(nbf=now + 600),
                jwt.encode({"sub": "x", "iss": "issuer", "aud": "bastion", "exp": now + 60}, "k" * 40, algorithm="HS256")):
        reply = srv.complete(bad)
        assert reply.status_code == 401 and bad not in reply.text
    assert srv.complete(token(scope="metrics")).status_code == 403


def test_request_limit_holds_across_both_api_servers(srv):
    codes, retry = [], []
    for _ in range(3 * LIMITED_RPM):
        reply = srv.complete(LIMITED, max_tokens=1)  # a new connection each time
        codes.append(reply.status_code)
        if reply.status_code == 429:
            retry.append(int(reply.headers["retry-after"]))
            assert reply.json()["error"]["type"] == "rate_limit_error"
    assert codes.count(200) == LIMITED_RPM and codes.count(429) == 2 * LIMITED_RPM
    assert all(r >= 1 for r in retry)
    served_by = {line["api_server"] for line in srv.audit_lines() if line["principal"] == "limited"}
    assert served_by == {0, 1}, "every request went to one API server; the test proves nothing"


def test_tokens_are_reserved_and_given_back_on_abort(srv):
    too_big = srv.complete(TPM, max_tokens=400)
    assert too_big.status_code == 429 and "lower max_tokens" in too_big.json()["error"]["message"]
    body = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 150, "ignore_eos": True, "stream": True}
    with srv.client(TPM) as c:
        with c.stream("POST", "/v1/completions", json=body) as stream:
            assert stream.status_code == 200
            next(stream.iter_lines())
        # the stream was abandoned: its unused reservation comes back within moments, while
        # a full minute's refill would take ~40 s. NOTE: 20 s of patience, not 5: on a loaded
        # 2-core machine the abort took longer than 5 s once (full suite, 2026-11-30), and 20 s
        # still tells a given-back reservation from a refill.
        deadline, status = time.monotonic() + 20, None
        while time.monotonic() < deadline and status != 200:
            status = srv.complete(TPM, max_tokens=150).status_code
            time.sleep(0.2)
        assert status == 200


def test_concurrency_per_key_and_the_global_queue(srv):
    hold = {"model": "demo", "prompt": "Once", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with srv.client(SINGLE) as c, c.stream("POST", "/v1/completions", json=hold) as first:
        lines = first.iter_lines()  # NOTE: kept alive: a discarded iterator closes the response
        next(lines)
        second = srv.complete(SINGLE)
        assert second.status_code == 429 and "concurrent" in second.json()["error"]["message"]
    with contextlib.ExitStack() as held:
        readers = []
        for _ in range(4):  # the server's 4 slots are taken
            c = held.enter_context(srv.client(BOB))
            response = held.enter_context(c.stream("POST", "/v1/completions", json=hold))
            assert response.status_code == 200
            readers.append(response.iter_lines())
            next(readers[-1])
        with ThreadPoolExecutor(3) as pool:
            waiting = [pool.submit(srv.complete, BOB) for _ in range(2)]
            time.sleep(1.0)
            refused = srv.complete(BOB)  # 4 running, 2 waiting: the queue is full
            assert refused.status_code == 429 and "--max-concurrent-requests 4" in refused.text
            assert not any(w.done() for w in waiting)
            held.close()  # the running streams go away; the waiting requests get their slots
            assert [w.result(timeout=60).status_code for w in waiting] == [200, 200]
    assert srv.complete(SINGLE).status_code == 200


def test_tenants_never_share_cached_prefixes(srv):
    prompt = " ".join(f"word{i}" for i in range(60))

    def cached(key: str) -> int:
        reply = srv.complete(key, prompt=prompt, max_tokens=1)
        assert reply.status_code == 200
        return reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached(ALICE) == 0
    assert cached(ALICE) > 0
    assert cached(BOB) == 0  # same prompt, other tenant: no hit
    assert cached(ALICE2) > 0  # same tenant, other key: shares


def test_audit_log_lines_rotation_and_injection(srv):
    srv.complete(ALICE, prompt="zebracorn secret prompt")
    with srv.client(ALICE) as c:
        c.get("/v1/models%0A%7B%22forged%22%3A1%7D")
    deadline = time.monotonic() + 10  # NOTE: a line is written just after its response is sent
    while time.monotonic() < deadline and not ({"/v1/completions", '/v1/models\n{"forged":1}'}
                                                <= {line["path"] for line in srv.audit_lines()}):
        time.sleep(0.1)
    lines = srv.audit_lines()
    assert all(set(line) >= {"time", "request_id", "principal", "tenant", "client", "method", "path",
                             "model", "status", "prompt_tokens", "completion_tokens", "latency_s"}
               for line in lines)
    done = [l for l in lines if l["principal"] == "alice" and l["path"] == "/v1/completions" and l["status"] == 200]
    assert done and done[-1]["completion_tokens"] == 4 and done[-1]["prompt_tokens"] > 0
    assert done[-1]["tenant"] == "acme" and done[-1]["model"] == "demo" and done[-1]["client"] == "127.0.0.1"
    forged = [l for l in lines if "forged" in l["path"]]
    assert forged and forged[-1]["path"] == '/v1/models\n{"forged":1}'
    assert not any("forged" in l and l.get("forged") == 1 for l in lines)
    assert "zebracorn" not in srv.audit.read_text()
    rotated = srv.audit.with_suffix(".log.1")
    srv.audit.rename(rotated)
    srv.proc.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not srv.audit.exists() and time.monotonic() < deadline:
        srv.complete(ALICE)
        time.sleep(0.3)
    for _ in range(4):  # both API servers have reopened: every request lands in the new file
        srv.complete(ALICE)
    assert srv.audit.exists()
    before = len(rotated.read_text().splitlines())
    srv.complete(ALICE)
    assert len(rotated.read_text().splitlines()) == before
    srv.audit_lines()  # still valid JSON lines


def test_key_file_rotation_without_restart(srv):
    assert srv.complete(ROT_OLD).status_code == 200
    srv.keys.write_text(key_file(ROT_NEW))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and srv.complete(ROT_NEW).status_code != 200:
        time.sleep(0.3)
    time.sleep(1.5)  # one API server has reloaded; the other polls the file within a second
    for _ in range(4):  # every API server has the new file
        assert srv.complete(ROT_NEW).status_code == 200
        assert srv.complete(ROT_OLD).status_code == 401
    srv.keys.write_text("[keys.broken]\nkey = 'short'\n")  # a bad write keeps the keys in force
    time.sleep(2.5)
    assert srv.complete(ROT_NEW).status_code == 200
    with srv.client(OPS) as ops:
        assert ops.post("/admin/reload-credentials").status_code == 400
        srv.keys.write_text(key_file(ROT_OLD))
        reply = ops.post("/admin/reload-credentials")
        assert reply.status_code == 200 and reply.json()["reloaded"] is True
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and srv.complete(ROT_OLD).status_code != 200:
        time.sleep(0.3)
    assert srv.complete(ROT_OLD).status_code == 200


def test_no_secret_in_argv_environment_logs_responses_or_metrics(srv):
    secrets = [ALICE, ALICE2, BOB, OPS, LIMITED, TPM, SINGLE, ROT_OLD, ROT_NEW, ENV_KEY, JWT_SECRET,
               token(), srv.server_cert.key.read_text().splitlines()[1]]
    with srv.client(ALICE) as c:
        c.get("/v1/models", headers={"Authorization": f"Bearer {JWT_SECRET}"})  # a secret as a bad key
    launcher = psutil.Process(srv.proc.proc.pid)
    children = launcher.children(recursive=True)
    assert len(children) >= 3
    for proc in [launcher, *children]:
        argv = " ".join(proc.cmdline())
        assert not any(s in argv for s in secrets), proc
    for proc in children:
        environ = proc.environ()
        assert "BASTION_API_KEY" not in environ
        assert not any(s in v for v in environ.values() for s in secrets), proc
    with srv.client(OPS) as ops:
        texts = [ops.get("/server_info").text, ops.get("/metrics").text, ops.get("/version").text]
    texts += [srv.complete("Bearer-garbage").text, srv.complete(token(exp=1)).text,
              "".join(srv.proc.stderr), srv.audit.read_text()]
    for text in texts:
        for s in secrets:
            assert s not in text
    info = json.loads(texts[0])
    assert "alice" in info["auth"]["api_keys"] and info["tls"]["enabled"] is True
