"""The process wire: typed messages, size limits, bind-at-0 endpoints and CURVE admission."""
from __future__ import annotations

import shutil
import stat

import msgspec
import pytest
import zmq

from bastion.sampling_params import SamplingParams
from bastion.transport import channel
from bastion.transport.messages import (AbortRequests, EngineLoad, EngineOutputs, EngineRequest,
                                        TokenDelta, TokenLogprob, decode, encode)


def test_messages_round_trip():
    messages = [
        EngineRequest("r1", [1, 2, 3], SamplingParams(temperature=0.5, seed=3, stop_token_ids=[9]),
                      cache_salt="tenant"),
        EngineRequest("r2", [1], SamplingParams(logit_bias={5: -100.0, 70000: 2.5})),
        AbortRequests(["r1", "r2"]),
        EngineOutputs(1, [TokenDelta("r1", 0, [5, 6], [TokenLogprob(5, -0.5, 1, [(5, -0.5)])], "stop", 16)],
                      EngineLoad(3, 4, 1200, 0.25, 0.5)),
    ]
    for message in messages:
        assert decode(encode(message)) == message


def test_invalid_sampling_params_are_dropped_on_decode():
    frame = msgspec.msgpack.encode({"type": "request", "request_id": "x", "prompt_token_ids": [1],
                                    "params": {"top_p": 5}})
    assert decode(frame) is None


def test_a_logit_bias_out_of_bounds_is_dropped_on_decode():
    frame = msgspec.msgpack.encode({"type": "request", "request_id": "x", "prompt_token_ids": [1],
                                    "params": {"logit_bias": {5: 500.0}}})
    assert decode(frame) is None


@pytest.mark.parametrize("frame", [
    b"\x00garbage",
    msgspec.msgpack.encode({"type": "shell", "cmd": "rm -rf /"}),
    msgspec.msgpack.encode([1, 2, 3]),
])
def test_unexpected_frames_are_dropped(frame):
    assert decode(frame) is None


def test_oversized_frames_are_dropped():
    frame = encode(AbortRequests(["x" * 100]))
    assert decode(frame, max_bytes=10) is None
    assert decode(frame) is not None


def test_private_ipc_dir_and_real_endpoints():
    ctx = zmq.Context()
    try:
        folder = channel.private_ipc_dir()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        with ctx.socket(zmq.PULL) as ipc, ctx.socket(zmq.PULL) as tcp:
            assert channel.bind(ipc, f"ipc://{folder}/input") == f"ipc://{folder}/input"
            endpoint = channel.bind(tcp, "tcp://127.0.0.1:0")
            assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
        shutil.rmtree(folder)
    finally:
        ctx.term()


def _exchange(ctx, server_keys, client_keys, server_public) -> bytes | None:
    with ctx.socket(zmq.PULL) as pull, ctx.socket(zmq.PUSH) as push:
        endpoint = channel.bind(channel.curve_server(pull, server_keys), "tcp://127.0.0.1:0")
        push.linger = 0
        channel.curve_client(push, client_keys, server_public).connect(endpoint)
        push.send(encode(AbortRequests(["hello"])))
        return pull.recv() if pull.poll(1500) else None


def test_curve_admits_only_allowed_client_keys():
    ctx = zmq.Context()
    server, allowed, stranger = (channel.CurveKeyPair.generate() for _ in range(3))
    gate = channel.CurveGate(ctx, {allowed.public})
    try:
        assert decode(_exchange(ctx, server, allowed, server.public)) == AbortRequests(["hello"])
        assert _exchange(ctx, server, stranger, server.public) is None
        wrong_server = channel.CurveKeyPair.generate()
        assert _exchange(ctx, server, allowed, wrong_server.public) is None
    finally:
        gate.stop()
        ctx.term()


def test_secret_key_never_in_repr():
    keys = channel.CurveKeyPair.generate()
    assert keys.secret.decode() not in repr(keys)


def test_internal_keys_derive_from_the_shared_secret(tmp_path):
    a = channel.deployment_keys(2, 1, b"k" * 40)
    b = channel.deployment_keys(2, 1, b"k" * 40)
    other = channel.deployment_keys(2, 1, b"j" * 40)
    assert [k.public for k in a] == [k.public for k in b]
    assert len({k.public for k in a}) == 3 and a[0].public != other[0].public
    assert a[2].allowed == [a[0].public, a[1].public]  # the API server admits both engines
    assert a[2].public in a[0].allowed and len(a[0].allowed) == channel.MAX_API_SERVERS
    # a node that runs only engine 1 derives the same key for it, and admits the same API servers
    assert channel.derive_keypair(b"k" * 40, "engine-1").public == a[1].public
    assert a[0].secret.decode() not in repr(a[0])
    random_keys = channel.deployment_keys(1, 1)
    assert random_keys[0].allowed == [random_keys[1].public] and random_keys[1].allowed == [random_keys[0].public]
    assert len({k.public for k in random_keys} | {k.public for k in channel.deployment_keys(1, 1)}) == 4
    with pytest.raises(ValueError, match="--internal-secret-file"):
        channel.read_internal_secret(str(tmp_path / "absent"))
    (tmp_path / "short").write_text("short")
    with pytest.raises(ValueError, match="fewer than 32 bytes"):
        channel.read_internal_secret(str(tmp_path / "short"))
