"""Disaggregated prefill and decode between two engines of this process, over the real KV
channel (CurveZMQ on loopback): the same greedy tokens as one engine, blocks freed on both
sides, leases that run out, leases released by an abort just after the hand-over (never under a
pull that sends them), pulls that fail (recompute or a 503), clients without the
deployment's keys, garbage frames, and what a relay on the wire sees."""
from __future__ import annotations

import dataclasses
import time
import tracemalloc

import msgspec
import pytest
import torch
import zmq

from bastion.config.engine import EngineConfig, KvTransferConfig
from bastion.engine.core import EngineCore
from bastion.engine.disagg import wire
from bastion.engine.disagg.handle import KvHandle, KvSource
from bastion.engine.disagg.kv_server import KvServer
from bastion.engine.disagg.leases import Leases
from bastion.engine.request import Request
from bastion.sampling_params import SamplingParams
from bastion.transport import channel
from bastion.transport.channel import CurveKeyPair
from tcp_relay import TcpRelay

PROMPTS = [[5 + i, 17, 300 + 7 * i, 42, 8, 9, 100 + i] * (1 + i % 4) for i in range(6)]


def _engine(model, role: str, key: channel.ChannelKeys, tp: int = 1, peers: list[bytes] | None = None,
            block_size: int = 8, **transfer) -> EngineCore:
    """An engine of `role` with `key`, admitting the launcher's `peers` (default: the key's)."""
    config = EngineConfig.from_kwargs(str(model), dtype="float32", num_kv_blocks=64, block_size=block_size,
                                      tensor_parallel_size=tp)
    config = dataclasses.replace(config, kv_transfer=KvTransferConfig(role=role, **transfer))
    engine = EngineCore(config)
    engine.enable_kv_transfer(0 if role == "prefill" else 1, CurveKeyPair(key.public, key.secret),
                              key.peers if peers is None else peers, "127.0.0.1", lambda: None)
    return engine


def _drain(engine: EngineCore, deadline_s: float = 60) -> dict:
    out, errors = {}, []
    deadline = time.monotonic() + deadline_s
    while engine.has_unfinished and time.monotonic() < deadline:
        for delta in engine.step():
            out.setdefault(delta.request_id, []).append(delta)
        errors += engine.take_errors()
        if engine.kv is not None and not engine.has_work:
            time.sleep(0.002)  # a pull under way
    return out, errors


def _greedy(max_tokens: int = 10) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


@pytest.fixture(scope="module")
def keys():
    return channel.deployment_keys(2, 0)


@pytest.fixture(scope="module")
def colocated(model_paths):
    engine = EngineCore(EngineConfig.from_kwargs(str(model_paths["demo"]), dtype="float32",
                                                 num_kv_blocks=64, block_size=8))
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, _greedy())
    out, _ = _drain(engine)
    return {rid: [t for d in deltas for t in d.new_token_ids] for rid, deltas in out.items()}


def _prefill_all(prefill: EngineCore, prompts=PROMPTS) -> dict:
    for i, prompt in enumerate(prompts):
        prefill.add_request(str(i), prompt, _greedy(), kv_hold=True)
    out, _ = _drain(prefill)
    return {rid: deltas[-1] for rid, deltas in out.items()}


def test_prefill_on_one_engine_and_decode_on_another_give_the_tokens_of_one(model_paths, keys, colocated):
    prefill = _engine(model_paths["demo"], "prefill", keys[0])
    decode = _engine(model_paths["demo"], "decode", keys[1])
    try:
        firsts = _prefill_all(prefill)
        assert all(d.kv_handle is not None and d.finish_reason is None for d in firsts.values())
        assert prefill.blocks.usage > 0 and len(prefill.kv.leases) == len(PROMPTS)
        for rid, first in firsts.items():
            source = KvSource(first.kv_handle, prefill.kv.endpoint, keys[0].public, first.new_token_ids)
            decode.add_request(rid, PROMPTS[int(rid)], _greedy(), kv_source=source)
        out, errors = _drain(decode)
        assert not errors
        got = {rid: firsts[rid].new_token_ids + [t for d in deltas for t in d.new_token_ids]
               for rid, deltas in out.items()}
        assert got == colocated
        assert decode.kv.counts.transfers == len(PROMPTS) and decode.kv.counts.fallbacks == 0
        assert decode.blocks.usage == 0
        deadline = time.monotonic() + 10  # the releases arrive on the KV server's thread
        while len(prefill.kv.leases) and time.monotonic() < deadline:
            prefill.step()
            time.sleep(0.01)
        assert prefill.blocks.usage == 0 and prefill.kv.leases.expired == 0
    finally:
        prefill.close()
        decode.close()


def test_tensor_parallel_ranks_move_every_workers_share_of_the_kv(model_paths, keys, colocated):
    """Two workers per rank: worker 0 serves and fills each worker's KV heads (shared files)."""
    prefill = _engine(model_paths["demo"], "prefill", keys[0], tp=2)
    decode = _engine(model_paths["demo"], "decode", keys[1], tp=2)
    try:
        assert len(prefill.kv.server.caches()) == 2 * len(prefill.runner.model.attention_layers)
        firsts = _prefill_all(prefill, PROMPTS[:3])
        for rid, first in firsts.items():
            source = KvSource(first.kv_handle, prefill.kv.endpoint, keys[0].public, first.new_token_ids)
            decode.add_request(rid, PROMPTS[int(rid)], _greedy(), kv_source=source)
        out, errors = _drain(decode)
        assert not errors and decode.kv.counts.transfers == 3 and decode.kv.counts.fallbacks == 0
        assert {rid: firsts[rid].new_token_ids + [t for d in deltas for t in d.new_token_ids]
                for rid, deltas in out.items()} == {rid: colocated[rid] for rid in firsts}
    finally:
        prefill.close()
        decode.close()


def test_an_unpulled_lease_runs_out_and_frees_its_blocks(model_paths, keys):
    prefill = _engine(model_paths["demo"], "prefill", keys[0], lease_s=0.3)
    try:
        first = _prefill_all(prefill, PROMPTS[:1])["0"]
        assert prefill.blocks.usage > 0 and prefill.kv.wake_in() <= 0.3
        time.sleep(0.4)
        assert prefill.has_work  # a lease to free wakes the engine
        prefill.step()
        assert prefill.blocks.usage == 0 and prefill.kv.leases.expired == 1
        assert isinstance(_pull_by_hand(prefill, keys[1], first.kv_handle, keys[0].public), wire.KvRefused)
    finally:
        prefill.close()


@pytest.mark.parametrize("policy", ["recompute", "fail"])
def test_a_pull_from_a_prefill_rank_that_is_gone(policy, model_paths, keys, colocated):
    prefill = _engine(model_paths["demo"], "prefill", keys[0])
    decode = _engine(model_paths["demo"], "decode", keys[1], load_failure_policy=policy)
    try:
        first = _prefill_all(prefill, PROMPTS[:1])["0"]
        endpoint = prefill.kv.endpoint
        prefill.close()  # its KV listener is gone
        decode.add_request("0", PROMPTS[0], _greedy(),
                           kv_source=KvSource(first.kv_handle, endpoint, keys[0].public, first.new_token_ids))
        out, errors = _drain(decode)
        assert decode.kv.counts.fallbacks == 1 and decode.blocks.usage == 0
        if policy == "recompute":
            assert not errors
            assert first.new_token_ids + [t for d in out["0"] for t in d.new_token_ids] == colocated["0"]
        else:
            assert [(rid, status) for rid, _, status in errors] == [("0", 503)]
            assert "could not be loaded from its prefill rank" in errors[0][1]
    finally:
        prefill.close()
        decode.close()


def _pull_by_hand(prefill: EngineCore, key: channel.ChannelKeys, handle, server_key: bytes,
                  timeout_ms: int = 2000):
    """Send one KvPull as a CURVE client with `key`; the first answer's header (None: no answer)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    channel.curve_client(sock, CurveKeyPair(key.public, key.secret), server_key)
    sock.connect(prefill.kv.endpoint)
    try:
        sock.send(wire.encode(wire.KvPull(handle.request_id, handle.lease_id)))
        if not sock.poll(timeout_ms):
            return None
        return wire.decode(sock.recv_multipart()[0])
    finally:
        sock.close(0)
        ctx.term()


def test_the_kv_listener_admits_only_the_deployment_and_survives_garbage(model_paths, keys):
    prefill = _engine(model_paths["demo"], "prefill", keys[0])
    try:
        handle = _prefill_all(prefill, PROMPTS[:1])["0"].kv_handle
        stranger = channel.deployment_keys(1, 0)[0]  # a valid keypair the deployment never made
        assert _pull_by_hand(prefill, stranger, handle, keys[0].public, timeout_ms=1500) is None
        # an admitted peer that sends garbage: dropped, and the listener keeps serving
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        channel.curve_client(sock, CurveKeyPair(keys[1].public, keys[1].secret), keys[0].public)
        sock.connect(prefill.kv.endpoint)
        for junk in ([b"\xff" * 40], [b"x" * 10000], [b"a", b"b", b"c"], [wire.encode(wire.KvDone(1, 2))]):
            sock.send_multipart(junk)
        assert not sock.poll(300)
        sock.close(0)
        ctx.term()
        assert isinstance(_pull_by_hand(prefill, keys[1], handle, keys[0].public), wire.KvLayer)
        forged = msgspec.structs.replace(handle, lease_id="0" * 32)  # a lease id nobody was given
        assert isinstance(_pull_by_hand(prefill, keys[1], forged, keys[0].public), wire.KvRefused)
    finally:
        prefill.close()


def test_kv_peers_name_the_keys_the_kv_listener_admits_now(model_paths, keys):
    """Ray ranks: no launcher names their keys (made on their nodes); the API servers send each
    rank's key as they know it now (KvPeers: rank, restarts, key). Decode rank 1 restarts with a
    new keypair: the prefill rank's KV listener admits the new key and no longer the old one,
    and a late message naming the old key (another API server's, sent before) changes nothing."""
    prefill = _engine(model_paths["demo"], "prefill", keys[0], peers=[])
    try:
        handle = _prefill_all(prefill, PROMPTS[:1])["0"].kv_handle
        first = [(0, 0, keys[0].public), (1, 0, keys[1].public)]
        prefill.kv.admit(first)
        assert isinstance(_pull_by_hand(prefill, keys[1], handle, keys[0].public), wire.KvLayer)
        restarted = channel.deployment_keys(1, 0)[0]
        prefill.kv.admit([(0, 0, keys[0].public), (1, 1, restarted.public)])
        prefill.kv.admit(first)  # late
        assert isinstance(_pull_by_hand(prefill, restarted, handle, keys[0].public), wire.KvLayer)
        assert _pull_by_hand(prefill, keys[1], handle, keys[0].public, timeout_ms=1500) is None
    finally:
        prefill.close()


def test_a_message_of_very_many_frames_is_dropped_without_holding_its_frames(keys):
    """The KV listener alone (a lease on a small cache): an admitted peer sends one message of
    100,000 small frames (each under the frame limit), then a pull on the same socket. The
    listener drops the message holding no more than a few of its frames at a time (the traced
    Python memory stays far below the ~4 MB those frames take as a list), and serves the pull."""
    leases = Leases(0, 30)
    req = Request("r", [5, 6, 7], _greedy(), frozenset(), 64)
    req.block_ids = [1]
    handle = leases.hold(req)
    cache = [(torch.zeros(2, 4, 8, 16), torch.zeros(2, 4, 8, 16))]
    server = KvServer(leases, lambda: cache, CurveKeyPair(keys[0].public, keys[0].secret), keys[0].peers,
                      "127.0.0.1")
    ctx = zmq.Context()
    sock = channel.curve_client(ctx.socket(zmq.DEALER), CurveKeyPair(keys[1].public, keys[1].secret), keys[0].public)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    tracemalloc.start()
    try:
        for _ in range(100_000):  # NOTE: not send_multipart, whose slice of the list would be traced
            sock.send(b"ab", zmq.SNDMORE)
        sock.send(b"ab")
        sock.send(wire.encode(wire.KvPull(handle.request_id, handle.lease_id)))
        answer = wire.decode(sock.recv_multipart()[0]) if sock.poll(60_000) else None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        sock.close(0)
        ctx.term()
        server.close()
    assert isinstance(answer, wire.KvLayer)
    assert peak < 2**20, f"{peak} bytes traced"


def test_a_relay_on_the_kv_channel_sees_no_plaintext(model_paths, keys, colocated):
    prefill = _engine(model_paths["demo"], "prefill", keys[0])
    decode = _engine(model_paths["demo"], "decode", keys[1])
    host, port = prefill.kv.endpoint.removeprefix("tcp://").rsplit(":", 1)
    relay = TcpRelay((host, int(port)))
    try:
        first = _prefill_all(prefill, PROMPTS[:1])["0"]
        k_cache = prefill.runner.model.attention_layers[0].k_cache
        plain = k_cache.index_select(1, torch.tensor(first.kv_handle.block_ids[:1]))[0, 0, :2].numpy().tobytes()
        source = KvSource(first.kv_handle, f"tcp://127.0.0.1:{relay.port}", keys[0].public, first.new_token_ids)
        decode.add_request("0", PROMPTS[0], _greedy(), kv_source=source)
        out, errors = _drain(decode)
        assert not errors and decode.kv.counts.transfers == 1
        assert first.new_token_ids + [t for d in out["0"] for t in d.new_token_ids] == colocated["0"]
        nbytes = decode.kv.counts.nbytes
        assert len(relay.seen) > nbytes  # every KV byte went through the relay ...
        assert plain not in relay.seen and b"layer" not in relay.seen and first.kv_handle.lease_id.encode() not in relay.seen
    finally:
        relay.close()
        prefill.close()
        decode.close()


def test_a_request_aborted_before_its_failed_pull_is_reported_ends_quietly(model_paths, keys):
    """`fail` policy, no room for the pull: the failure waits for the next step; an abort in
    between ends the request, and the step reports nothing for it (and does not fail)."""
    decode = _engine(model_paths["demo"], "decode", keys[1], load_failure_policy="fail")
    try:
        handle = KvHandle(0, "0", "0" * 32, [0, 1], 4, time.time() + 30)
        decode.add_request("0", [5, 6, 7], _greedy(), kv_source=KvSource(handle, "tcp://127.0.0.1:9", keys[0].public, [8]))
        assert decode.kv.counts.fallbacks == 1  # 4 tokens named for a 3-token prompt: failed at once
        decode.abort_request("0")
        assert decode.step() == [] and decode.take_errors() == [] and not decode.has_unfinished
    finally:
        decode.close()


def test_an_abort_for_a_request_just_handed_over_releases_its_lease(model_paths, keys):
    """The abort reached the prefill rank during the step that handed the request over: its
    lease is released at once (the API server will not pass that handle on), not at expiry."""
    prefill = _engine(model_paths["demo"], "prefill", keys[0])  # the default lease: 30 s
    try:
        firsts = _prefill_all(prefill, PROMPTS[:2])
        used = prefill.blocks.usage
        assert prefill.abort_request("0") == [] and prefill.has_work
        prefill.step()
        assert len(prefill.kv.leases) == 1 and prefill.kv.leases.expired == 0 and 0 < prefill.blocks.usage < used
        assert isinstance(_pull_by_hand(prefill, keys[1], firsts["0"].kv_handle, keys[0].public), wire.KvRefused)
        assert isinstance(_pull_by_hand(prefill, keys[1], firsts["1"].kv_handle, keys[0].public), wire.KvLayer)
    finally:
        prefill.close()


def test_a_lease_released_while_a_pull_sends_it_is_freed_after_that_pull():
    """An abort's release can come while the KV server sends the blocks: they are not freed
    (nor reused) under the sender, and the engine wakes to free them when it is done."""
    wakes = []
    leases = Leases(0, 30, lambda: wakes.append(1))
    req = Request("r", [5, 6, 7], _greedy(), frozenset(), 64)
    handle = leases.hold(req)
    assert leases.pin("r", handle.lease_id) == handle
    assert leases.release("r") and not leases.due() and leases.reap() == []
    assert isinstance(leases.pin("r", handle.lease_id), str)  # no further pull of a released lease
    leases.unpin(handle.lease_id)
    assert len(wakes) == 2 and leases.due() and leases.reap() == [req] and leases.expired == 0


@pytest.mark.parametrize("why", ["no room for the pull", "another block size"])
def test_a_decode_rank_that_does_not_pull_a_handle_releases_its_lease(why, model_paths, keys, colocated):
    """No free blocks for the pull (the rank recomputes when it can), or a pull that fails (its
    blocks are of another size): the decode rank tells the prefill rank to free the lease at
    once, not after its 30 s."""
    prefill = _engine(model_paths["demo"], "prefill", keys[0])
    decode = _engine(model_paths["demo"], "decode", keys[1], block_size=4 if why == "another block size" else 8)
    hog = Request("hog", [5] * 8 * 64, _greedy(), frozenset(), 8 * 64)
    try:
        first = _prefill_all(prefill, PROMPTS[:1])["0"]
        if why == "no room for the pull":
            assert decode.blocks.allocate(hog, 8 * 64) and decode.blocks.num_free_blocks == 0
        source = KvSource(first.kv_handle, prefill.kv.endpoint, keys[0].public, first.new_token_ids)
        decode.add_request("0", PROMPTS[0], _greedy(), kv_source=source)
        tokens, deadline = list(first.new_token_ids), time.monotonic() + 10
        while len(prefill.kv.leases) and time.monotonic() < deadline:
            tokens += [t for d in decode.step() for t in d.new_token_ids]
            prefill.step()
            time.sleep(0.01)
        assert len(prefill.kv.leases) == 0 and prefill.kv.leases.expired == 0 and prefill.blocks.usage == 0
        decode.blocks.free(hog)
        out, errors = _drain(decode)
        assert not errors and decode.kv.counts.fallbacks == 1
        assert tokens + [t for d in out.get("0", []) for t in d.new_token_ids] == colocated["0"]
    finally:
        prefill.close()
        decode.close()
