"""Internal sockets over TCP: engines listen on the internal host only, CurveZMQ turns away
peers outside the deployment, and malformed frames are dropped while the engine keeps serving."""
from __future__ import annotations

import socket
import time

import httpx
import psutil
import pytest
import zmq

from bastion.sampling_params import SamplingParams
from bastion.transport import channel
from bastion.transport.messages import ClientHello, EngineRequest, encode
from server_process import ServerProcess


def engine_port(server: ServerProcess) -> int:
    (pid,) = server.engine_pids()
    listening = [c.laddr for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert [addr.ip for addr in listening] == ["127.0.0.1"]
    return listening[0].port


def completes(server: ServerProcess) -> bool:
    reply = httpx.post(f"{server.url}/v1/completions", timeout=30,
                       json={"model": "bastion-demo", "prompt": "Once", "max_tokens": 3})
    return reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3


def intrude(port: int, frames: list[bytes], curve_server_key: bytes | None = None,
            mine: channel.CurveKeyPair | None = None) -> bytes | None:
    """Connect to an engine as an outsider (with keys `mine`, else random ones), say hello with
    our own result socket, send `frames`; return whatever the engine sends us within 2 s."""
    ctx = zmq.Context()
    keys = mine or channel.CurveKeyPair.generate()
    try:
        with ctx.socket(zmq.PULL) as pull, ctx.socket(zmq.PUSH) as push:
            if curve_server_key is not None:
                channel.curve_server(pull, keys)
            result_endpoint = channel.bind(pull, "tcp://127.0.0.1:0")
            push.linger = 0
            if curve_server_key is not None:
                channel.curve_client(push, keys, curve_server_key)
            push.connect(f"tcp://127.0.0.1:{port}")
            if push.poll(1000, zmq.POLLOUT):
                push.send(encode(ClientHello(7, result_endpoint, keys.public)), flags=zmq.NOBLOCK)
            for frame in frames:
                if push.poll(500, zmq.POLLOUT):
                    push.send(frame, flags=zmq.NOBLOCK)
            return pull.recv() if pull.poll(2000) else None
    finally:
        ctx.term()


REQUEST = encode(EngineRequest("stolen", [1, 2, 3], SamplingParams(max_tokens=2), None, 7))


SECRET = b"internal-secret-" + b"s" * 32


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory):
    secret_file = tmp_path_factory.mktemp("internal") / "secret"
    secret_file.write_bytes(SECRET)
    server = ServerProcess("--internal-transport", "tcp", "--internal-secret-file", str(secret_file))
    yield server
    server.kill()


def test_strangers_get_nothing_from_an_encrypted_engine(encrypted):
    port = engine_port(encrypted)
    assert completes(encrypted)
    engine_key = channel.derive_keypair(SECRET, "engine-0").public
    assert intrude(port, [REQUEST]) is None  # no CURVE at all
    assert intrude(port, [REQUEST], channel.CurveKeyPair.generate().public) is None  # wrong server key
    assert intrude(port, [REQUEST], engine_key) is None  # the right server, but not a deployment key
    outsider = channel.derive_keypair(b"another-secret-" + b"x" * 32, "api-server-1")
    assert intrude(port, [REQUEST], engine_key, outsider) is None  # keys from another secret
    # a process holding the deployment's secret (a node of this deployment) is admitted
    assert intrude(port, [REQUEST], engine_key, channel.derive_keypair(SECRET, "api-server-1")) is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"\xff" * 64 + b"GET / HTTP/1.1\r\n\r\n")
    assert completes(encrypted)
    assert encrypted.proc.poll() is None


def test_malformed_frames_are_dropped_and_the_engine_keeps_serving():
    server = ServerProcess("--internal-transport", "tcp", "--internal-encryption", "off",
                           "--log-level", "warning")
    try:
        port = engine_port(server)
        garbage = [b"\x00not msgpack", encode(ClientHello(9, "tcp://127.0.0.1:1"))[:5], b"\x93" * 10]
        intrude(port, garbage)
        time.sleep(0.5)
        assert completes(server)
        log = "".join(server.stderr)
        assert "dropped a malformed frame" in log
        # what encryption prevents: without it, any local peer could use the engine
        assert intrude(port, [REQUEST]) is not None
    finally:
        server.kill()
