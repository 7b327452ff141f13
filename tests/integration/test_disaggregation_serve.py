"""`bastion serve -dp 2 --prefill-ranks 1`: rank 0 prefills, rank 1 pulls the KV and decodes.
Greedy outputs equal a colocated deployment's (streamed and not) and every block is free on
both ranks afterwards; a prefill rank SIGKILLed between prefill and pull leaves the request to
be recomputed (`recompute`) or failed with a 503 (`fail`); an unpulled lease runs out and frees
its blocks; the KV listener answers no client without the deployment's keys and survives garbage;
a relay on the real KV channel sees no plaintext; clients that leave around their first token
leave no lease held. The decode rank is held between prefill and pull with SIGSTOP."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import psutil
import zmq
from openai import OpenAI

from bastion.engine.disagg import wire
from bastion.sampling_params import SamplingParams
from bastion.transport import channel
from bastion.transport.channel import CurveKeyPair
from bastion.transport.messages import ClientHello, EngineRequest, decode, encode
from server_process import ServerProcess
from tcp_relay import TcpRelay

MODEL = "bastion-demo"
# NOTE: some prompts long enough for prefix affinity (32+ tokens), which must never send a
# request's decode to its prefill rank
PROMPTS = [f"Once upon a time {i} there was" + " a little" * (5 * (i % 5)) for i in range(16)]
ARGS = ("--dtype", "float32", "--enforce-eager")  # as the API tests' server, the reference


def _completions(server: ServerProcess, stream: bool) -> list[str]:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    texts = []
    for prompt in PROMPTS:
        if stream:
            chunks = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0,
                                               stream=True)
            texts.append("".join(c.choices[0].text for c in chunks if c.choices))
        else:
            texts.append(client.completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                                   temperature=0).choices[0].text)
    return texts


def _stream_texts(server: ServerProcess, body: dict):
    """Each streamed chunk's text as it arrives, then the usage's completion tokens (an int)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    yield chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices") or []:
                    yield choice.get("text") or ""


def _wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def _engine(server: ServerProcess, rank: int) -> psutil.Process:
    return next(p for p in psutil.Process(server.proc.pid).children(recursive=True)
                if f"engine-{rank}" in " ".join(p.cmdline()))


def _held_between_prefill_and_pull(server: ServerProcess, body: dict) -> tuple[threading.Thread, dict]:
    """SIGSTOP the decode rank, send `body`, return once the prefill rank holds its KV."""
    os.kill(_engine(server, 1).pid, signal.SIGSTOP)
    answer: dict = {}

    def send() -> None:
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        answer.update(status=response.status_code, body=response.json(), at=time.monotonic())

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert server.wait_for_metric("bastion_kv_leases", lambda v: v == 1, timeout=60, rank="0") == 1
    return sender, answer


BODY = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "ignore_eos": True}


def test_one_prefill_and_one_decode_rank_answer_as_colocated_ranks_and_recompute_a_lost_pull(shared_server):
    """The colocated reference is the API tests' server (-dp 2, the same model and flags)."""
    server = ServerProcess("-dp", "2", "--prefill-ranks", "1", *ARGS, timeout=240)
    decode = _engine(server, 1)
    try:
        colocated = _completions(shared_server, stream=False)
        assert _completions(server, stream=False) == colocated
        assert _completions(server, stream=True) == colocated
        assert server.metric("bastion_kv_transfers_total", rank="1") == 2 * len(PROMPTS)
        assert server.metric("bastion_kv_transfer_seconds_count", rank="1") == 2 * len(PROMPTS)
        assert server.metric("bastion_kv_transfer_bytes_total", rank="1") > 0
        assert server.metric("bastion_kv_transfer_fallbacks_total", rank="1") == 0
        assert server.wait_for_metric("bastion_kv_leases", lambda v: v == 0, rank="0") == 0
        for rank in ("0", "1"):  # every block back in the pool on both ranks
            assert server.wait_for_metric("bastion_kv_cache_usage_ratio", lambda v: v == 0, rank=rank) == 0
        # a client field cannot steer the KV channel: vLLM's kv_transfer_params is read by nothing
        steer = {"remote_host": "127.0.0.9", "remote_port": 1, "remote_block_ids": [0], "do_remote_prefill": True}
        steered = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
            "model": MODEL, "prompt": PROMPTS[3], "max_tokens": 12, "temperature": 0, "kv_transfer_params": steer})
        assert steered.status_code == 200 and steered.json()["choices"][0]["text"] == colocated[3]
        assert server.metric("bastion_kv_transfers_total", rank="1") == 2 * len(PROMPTS) + 1
        # the prefill rank dies between prefill and pull: the first token has streamed already;
        # the decode rank recomputes the prompt
        os.kill(decode.pid, signal.SIGSTOP)
        chunks: list[str] = []
        streamer = threading.Thread(target=lambda: chunks.extend(_stream_texts(server, BODY)), daemon=True)
        streamer.start()
        assert server.wait_for_metric("bastion_kv_leases", lambda v: v == 1, timeout=60, rank="0") == 1
        assert _wait_until(lambda: any(isinstance(c, str) and c for c in chunks)), \
            "the first token did not stream before the decode rank ran"
        _engine(server, 0).kill()
        os.kill(decode.pid, signal.SIGCONT)
        streamer.join(60)
        assert chunks[-1] == 8  # completion tokens: 1 from the dead prefill rank, 7 after recomputing
        assert server.wait_for_metric("bastion_kv_transfer_fallbacks_total", lambda v: v == 1, rank="1") == 1
        assert server.sigterm_leaves_nothing()
    finally:
        if decode.is_running():
            os.kill(decode.pid, signal.SIGCONT)
        server.kill()


def _leave(server: ServerProcess, body: dict, after_s: float | None) -> None:
    """Send a streamed `body` on a raw socket and close it `after_s` seconds later (None: as
    soon as the first token's chunk arrives)."""
    url = urlsplit(server.url)
    payload = json.dumps({**body, "stream": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(head + payload)
        if after_s is not None:
            time.sleep(after_s)
            return
        received = b""
        while b"data: {" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                return
            received += chunk


def test_clients_that_leave_around_their_first_token_leave_no_lease_held():
    """Long prompts (one prefill step takes a while), a lease far longer than the test: clients
    close their connection at moments spread over the prefill and at the first token. Every
    lease is released at once, whether the abort reached the prefill rank during the step that
    handed the request over or the API server dropped the handle (no waiting for expiry)."""
    server = ServerProcess("-dp", "2", "--prefill-ranks", "1", "--kv-lease-s", "600", *ARGS, timeout=240)
    try:
        def body(i: int) -> dict:  # a new first token each time: no prefix-cache hit shortens a prefill
            return {"model": MODEL, "prompt": [10 + i] + [(7 * j + i) % 3900 + 50 for j in range(1900)],
                    "max_tokens": 32, "temperature": 0, "ignore_eos": True}
        _leave(server, body(0), None)  # the first prefill of a rank is slower than the others
        started = time.monotonic()
        _leave(server, body(1), None)
        first_token_s = time.monotonic() - started  # about one prefill step
        for i in range(2, 10):  # leave 0.2 .. 0.9 of the way to the first token, or at it
            _leave(server, body(i), None if i % 4 == 0 else first_token_s * 0.1 * i)
        assert server.wait_for_metric("bastion_kv_leases", lambda v: v == 0, timeout=30, rank="0") == 0
        assert server.wait_for_metric("bastion_kv_cache_usage_ratio", lambda v: v == 0, rank="0") == 0
        assert server.metric("bastion_kv_lease_expiries_total", rank="0") == 0
        assert server.metric("bastion_kv_transfer_fallbacks_total", rank="1") == 0  # no lease freed under a pull
    finally:
        server.kill()


def _ask(endpoint: str, keys: CurveKeyPair, server_key: bytes, frames: list[bytes],
         wait_ms: int = 2000) -> list[bytes] | None:
    """Send `frames` to `endpoint` as a CURVE client with `keys`; the answer, or None."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    channel.curve_client(sock, keys, server_key)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        return sock.recv_multipart() if sock.poll(wait_ms) else None
    finally:
        sock.close(0)
        ctx.term()


def _listeners(server: ServerProcess, rank: int) -> list[str]:
    """The TCP endpoints engine `rank` listens on."""
    return [f"tcp://{c.laddr.ip}:{c.laddr.port}" for c in _engine(server, rank).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN]


def _kv_listener_refuses_strangers_and_survives_garbage(server: ServerProcess, secret: bytes) -> None:
    """A client with a valid keypair the deployment never made gets no answer from any listener
    of the prefill rank; an engine's key sending garbage is ignored; that key's pull of a lease
    nobody was given is refused by the KV listener (it serves on)."""
    endpoints = _listeners(server, 0)
    assert len(endpoints) == 2 and all(e.startswith("tcp://127.0.0.1:") for e in endpoints)  # input, KV
    server_key = channel.derive_keypair(secret, channel.engine_role(0)).public
    stranger, peer = CurveKeyPair.generate(), channel.derive_keypair(secret, channel.engine_role(1))
    pull = wire.encode(wire.KvPull("r", "0" * 32))
    assert all(_ask(e, stranger, server_key, [pull], 500) is None for e in endpoints)
    for endpoint in endpoints:
        for junk in ([b"\xff" * 64], [b"x" * 100_000], [b"a", b"b", b"c"]):
            assert _ask(endpoint, peer, server_key, junk, 300) is None
    answers = [_ask(e, peer, server_key, [pull], 500) for e in endpoints]
    assert [isinstance(wire.decode(a[0]), wire.KvRefused) for a in answers if a] == [True]


def _pull_a_lease_through_a_relay(server: ServerProcess, secret: bytes, ctx: zmq.Context) -> None:
    """Act as an API server (keys derived from the secret, as every node derives them): ask the
    prefill rank for a held prompt, then pull its KV as engine 1 through a byte-recording relay
    on the real KV channel. The relay sees all the bytes and none of the plaintext. NOTE: our
    result socket stays open in `ctx` while the server runs (the engine pushes to it)."""
    engine_key = channel.derive_keypair(secret, channel.engine_role(0)).public
    api, puller = channel.derive_keypair(secret, channel.api_server_role(7)), channel.derive_keypair(
        secret, channel.engine_role(1))
    endpoints = _listeners(server, 0)
    bogus = wire.encode(wire.KvPull("r", "0" * 32))  # only the KV listener answers (a refusal)
    [kv_endpoint] = [e for e in endpoints if _ask(e, puller, engine_key, [bogus], 500) is not None]
    out = channel.curve_server(ctx.socket(zmq.PULL), api)
    out_port = out.bind_to_random_port("tcp://127.0.0.1")
    pushes = [channel.curve_client(ctx.socket(zmq.PUSH), api, engine_key) for _ in endpoints]
    try:
        request = EngineRequest("relay-test", list(range(3, 60)), SamplingParams(temperature=0, max_tokens=4),
                                client_index=7, kv_hold=True)
        for push, endpoint in zip(pushes, endpoints):  # one of them is the engine's input socket
            push.connect(endpoint)
            push.send(encode(ClientHello(7, f"tcp://127.0.0.1:{out_port}", api.public)))
            push.send(encode(request))
        handle = None
        while handle is None and out.poll(30_000):
            outputs = decode(out.recv())
            handle = next((d.kv_handle for d in getattr(outputs, "outputs", []) if d.kv_handle), None)
        assert handle is not None and handle.request_id == "relay-test"
        relay = TcpRelay(("127.0.0.1", int(kv_endpoint.rsplit(":", 1)[1])))
        keys, nbytes = _pull(f"tcp://127.0.0.1:{relay.port}", puller, engine_key, handle)
        relay.close()
        seen = bytes(relay.seen)
        assert len(seen) > nbytes > 0 and keys[:64] not in seen and handle.lease_id.encode() not in seen
    finally:
        for push in pushes:  # NOTE: the one aimed at the KV listener would retry its handshake
            push.close(0)


def _pull(endpoint: str, keys: CurveKeyPair, server_key: bytes, handle) -> tuple[bytes, int] | None:
    """Pull `handle` (then release it): layer 0's key bytes and the bytes of every layer."""
    ctx = zmq.Context()
    sock = channel.curve_client(ctx.socket(zmq.DEALER), keys, server_key)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(wire.encode(wire.KvPull(handle.request_id, handle.lease_id)))
        first, nbytes = None, 0
        while sock.poll(2000):
            frames = sock.recv_multipart()
            header = wire.decode(frames[0])
            if isinstance(header, wire.KvDone):
                sock.send(wire.encode(wire.KvRelease(handle.request_id, handle.lease_id)))
                return first, nbytes
            assert isinstance(header, wire.KvLayer), header
            first = first or frames[1]
            nbytes += len(frames[1]) + len(frames[2])
        return None
    finally:
        sock.close(0)
        ctx.term()


def test_an_unpulled_lease_expires_and_under_fail_a_lost_pull_is_a_503(tmp_path):
    """Over internal TCP with keys derived from a secret: the test can act as an engine."""
    secret_file = tmp_path / "internal.secret"
    secret_file.write_text("s" * 48)
    server = ServerProcess("-dp", "2", "--prefill-ranks", "1", "--kv-load-failure-policy", "fail",
                           "--kv-lease-s", "2", "--internal-transport", "tcp", "--internal-secret-file",
                           str(secret_file), *ARGS, timeout=240)
    decode = _engine(server, 1)
    fake_api_server = zmq.Context()
    try:
        _kv_listener_refuses_strangers_and_survives_garbage(server, secret_file.read_bytes().strip())
        _pull_a_lease_through_a_relay(server, secret_file.read_bytes().strip(), fake_api_server)
        assert httpx.post(f"{server.url}/v1/completions", json=BODY, timeout=60).status_code == 200
        sender, answer = _held_between_prefill_and_pull(server, BODY)
        assert server.wait_for_metric("bastion_kv_lease_expiries_total", lambda v: v == 1, rank="0") == 1
        assert server.wait_for_metric("bastion_kv_leases", lambda v: v == 0, rank="0") == 0
        assert server.wait_for_metric("bastion_kv_cache_usage_ratio", lambda v: v == 0, rank="0") == 0
        _engine(server, 0).kill()
        resumed = time.monotonic()
        os.kill(decode.pid, signal.SIGCONT)
        sender.join(60)
        assert answer["status"] == 503, answer
        assert "could not be loaded from its prefill rank" in answer["body"]["error"]["message"]
        assert answer["at"] - resumed < 2  # the pull gives up after 1 s without an answer
        assert server.wait_for_metric("bastion_kv_transfer_fallbacks_total", lambda v: v == 1, rank="1") == 1
    finally:
        if decode.is_running():
            os.kill(decode.pid, signal.SIGCONT)
        server.kill()
        fake_api_server.destroy(linger=0)


def _serve_fails(*args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "bastion.cli", "serve", *args, "--port", "0"],
                          capture_output=True, text=True, timeout=120)


def test_deployments_that_cannot_disaggregate_are_refused_with_the_flag():
    done = _serve_fails("-dp", "2", "--prefill-ranks", "2")
    assert done.returncode == 2 and "--prefill-ranks 2 must leave at least one" in done.stderr
    done = _serve_fails("--kv-role", "prefill")
    assert done.returncode == 2 and "--kv-role prefill gives every rank of this node that role" in done.stderr
