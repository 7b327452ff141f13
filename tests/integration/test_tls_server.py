"""TLS end to end: start-up validation (exit 2 naming the flag or file), mutual TLS with real
certificates, TLS 1.2 as the floor, and certificate refresh by a Kubernetes-style symlink swap
while a stream is in flight."""
from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from certs import CertAuthority, Issued
from server_process import ServerProcess


def bastion_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bastion.cli", "serve", "--port", "0", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("pki"))


def test_start_up_refuses_bad_security_flags_before_loading(ca, tmp_path):
    good, other, expired = ca.issue("good"), ca.issue("other"), ca.issue("old", days=-1)
    cases = [
        (["--ssl-keyfile", str(good.key)], "--ssl-keyfile needs --ssl-certfile"),
        (["--ssl-certfile", str(good.cert)], "--ssl-certfile needs --ssl-keyfile"),
        (["--ssl-keyfile", str(other.key), "--ssl-certfile", str(good.cert)], f"{other.key} (--ssl-keyfile) does not match"),
        (["--ssl-keyfile", str(expired.key), "--ssl-certfile", str(expired.cert)], f"{expired.cert} (--ssl-certfile) expired"),
        (["--ssl-keyfile", str(good.key), "--ssl-certfile", str(tmp_path / "none.crt")], "none.crt (--ssl-certfile)"),
        (["--api-key-file", str(tmp_path / "none.toml")], "none.toml (--api-key-file)"),
        (["--host", "0.0.0.0"], "--allow-insecure"),
        (["--internal-secret-file", str(good.key)], "--internal-secret-file needs --internal-transport tcp"),
        (["--internal-transport", "tcp", "--internal-secret-file", str(tmp_path / "none")],
         "none (--internal-secret-file)"),
    ]
    for args, needle in cases:
        result = bastion_serve(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert needle in result.stderr, (needle, result.stderr)
        assert "engine-0" not in result.stderr  # refused before any model loads


def swap_in(live: Path, issued: Issued, generation: int) -> None:
    """Kubernetes' atomic update: write a new folder, then repoint the `..data` symlink."""
    folder = live / f"..{generation}"
    folder.mkdir()
    (folder / "tls.crt").write_bytes(issued.cert.read_bytes())
    (folder / "tls.key").write_bytes(issued.key.read_bytes())
    tmp = live / "..data_tmp"
    tmp.symlink_to(folder.name)
    os.replace(tmp, live / "..data")


def peer_common_name(url: str, context: ssl.SSLContext) -> str:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]


@pytest.fixture(scope="module")
def mtls(ca, tmp_path_factory):
    live = tmp_path_factory.mktemp("live")
    swap_in(live, ca.issue("first"), 1)
    for name in ("tls.crt", "tls.key"):
        (live / name).symlink_to(f"..data/{name}")
    client = ca.issue("client", client=True)
    context = ssl.create_default_context(cafile=str(ca.path))
    context.load_cert_chain(client.cert, client.key)
    proc = ServerProcess("--ssl-keyfile", str(live / "tls.key"), "--ssl-certfile", str(live / "tls.crt"),
                         "--ssl-ca-certs", str(ca.path), "--ssl-cert-reqs", "required",
                         "--enable-ssl-refresh", http={"verify": context})
    yield proc, live, context
    proc.kill()


def test_mutual_tls_needs_a_client_certificate_and_tls_1_2(ca, mtls):
    proc, _, context = mtls
    sdk = openai.OpenAI(base_url=f"{proc.url}/v1", api_key="unused", http_client=httpx.Client(verify=context))
    reply = sdk.completions.create(model="bastion-demo", prompt="Hello", max_tokens=3)
    assert reply.usage.completion_tokens == 3
    no_cert = ssl.create_default_context(cafile=str(ca.path))
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(f"{proc.url}/health", verify=no_cert).raise_for_status()
    old = ssl.create_default_context(cafile=str(ca.path))
    old.load_cert_chain(*_client_pair(ca))
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((httpx.ConnectError, ssl.SSLError)):
        httpx.get(f"{proc.url}/health", verify=old)


def test_bench_serve_speaks_mutual_tls(ca, mtls, tmp_path):
    proc, _, _ = mtls
    client = ca.issue("bench-client", client=True)
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "bastion.cli", "bench", "serve", "--url", proc.url,
                             "--ssl-ca-certs", str(ca.path), "--ssl-client-certfile", str(client.cert),
                             "--ssl-client-keyfile", str(client.key), "--num-requests", "4",
                             "--max-tokens", "4", "--concurrency", "2", "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    serving = json.loads(out.read_text())
    assert serving["num_requests"] == 4 and serving["errors"] == 0, serving


def _client_pair(ca: CertAuthority) -> tuple[Path, Path]:
    issued = ca.issue("client-old", client=True)
    return issued.cert, issued.key


def test_certificate_refresh_keeps_streams_and_skips_bad_files(ca, mtls):
    proc, live, context = mtls
    assert peer_common_name(proc.url, context) == "first"
    body = {"model": "bastion-demo", "prompt": "Once", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.Client(verify=context, timeout=60) as c, c.stream("POST", f"{proc.url}/v1/completions", json=body) as s:
        lines = s.iter_lines()
        next(lines)
        swap_in(live, ca.issue("second"), 2)
        deadline = time.monotonic() + 10
        while peer_common_name(proc.url, context) != "second" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert peer_common_name(proc.url, context) == "second"
        rest = list(lines)  # the stream that began under the old certificate runs to its end
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
    third = ca.issue("third")
    folder = live / "..3"
    folder.mkdir()
    (folder / "tls.crt").write_bytes(third.cert.read_bytes())
    (folder / "tls.key").write_text("not a key")  # a bad write
    tmp = live / "..data_tmp"
    tmp.symlink_to(folder.name)
    os.replace(tmp, live / "..data")
    time.sleep(2.5)
    assert peer_common_name(proc.url, context) == "second"
    assert any("still serving the previous certificate" in line for line in proc.stderr)
    assert httpx.get(f"{proc.url}/health", verify=context).status_code == 200
