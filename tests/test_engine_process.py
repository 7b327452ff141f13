"""The engine core in its own process, driven over ZMQ with typed messages."""
from __future__ import annotations

import shutil

import pytest
import zmq

from bastion.config import EngineConfig
from bastion.engine.core import EngineCore
from bastion.engine.core_proc import EngineStartError, start_engine_process
from bastion.engine.sampling_params import SamplingParams
from bastion.transport import channel
from bastion.transport.messages import (AbortRequests, EngineOutputs, EngineRequest, RequestError,
                                        decode, encode)

PROMPTS = {"a": [5, 6, 7, 8, 9], "b": [40, 41, 42], "c": list(range(100, 130))}


@pytest.fixture(scope="module")
def engine_proc(tiny_qwen3):
    config = EngineConfig.from_kwargs(str(tiny_qwen3), dtype="float32", num_kv_blocks=128,
                                      block_size=4, max_model_len=256, num_threads=1)
    folder = channel.private_ipc_dir()
    proc, ready = start_engine_process(config, 0, f"ipc://{folder}")
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.connect(ready.input_endpoint)
    pull.connect(ready.output_endpoint)
    yield config, ready, push, pull
    push.close(0)
    pull.close(0)
    ctx.term()
    proc.terminate()
    proc.join(10)
    shutil.rmtree(folder, ignore_errors=True)
    assert not proc.is_alive()


def receive_until_finished(pull, expected: set[str]) -> tuple[dict, dict, list]:
    tokens: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    errors: list[RequestError] = []
    while expected - set(reasons) - {e.request_id for e in errors}:
        assert pull.poll(30_000), "engine stopped answering"
        message = decode(pull.recv())
        if isinstance(message, RequestError):
            errors.append(message)
            continue
        assert isinstance(message, EngineOutputs) and message.engine_index == 0
        assert message.load is not None
        for out in message.outputs:
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finish_reason:
                reasons[out.request_id] = out.finish_reason
    return tokens, reasons, errors


def test_requests_over_zmq_match_the_in_process_engine(engine_proc):
    config, ready, push, pull = engine_proc
    assert ready.input_endpoint.startswith("ipc://") and ready.max_model_len == 256
    params = SamplingParams(temperature=0, max_tokens=10)
    for rid, prompt in PROMPTS.items():
        push.send(encode(EngineRequest(rid, prompt, params)))
    tokens, reasons, errors = receive_until_finished(pull, set(PROMPTS))
    assert not errors and set(reasons.values()) == {"length"}
    local = EngineCore(config)
    for rid, prompt in PROMPTS.items():
        local.add_request(rid, prompt, params)
    expected: dict[str, list[int]] = {}
    while local.has_unfinished:
        for out in local.step():
            expected.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert tokens == expected


def test_invalid_requests_get_an_error_and_abort_ends_a_request(engine_proc):
    _, _, push, pull = engine_proc
    push.send(encode(EngineRequest("too-long", [5] * 300, SamplingParams())))
    push.send(encode(EngineRequest("long-run", [5, 6], SamplingParams(max_tokens=200, ignore_eos=True))))
    push.send(b"not a message")                                   # dropped, engine keeps going
    push.send(encode(AbortRequests(["long-run"])))
    tokens, reasons, errors = receive_until_finished(pull, {"too-long", "long-run"})
    assert [e.request_id for e in errors] == ["too-long"]
    assert "prompt has 300 tokens but the model's context is 256 tokens" in errors[0].message
    assert reasons == {"long-run": "abort"} and len(tokens.get("long-run", [])) < 200


def test_an_engine_that_cannot_load_fails_the_start_with_its_reason(tmp_path):
    config = EngineConfig.from_kwargs(str(tmp_path / "missing"))
    with pytest.raises(EngineStartError, match="engine 3 failed to start: ModelLoadError: .* is not a directory"):
        start_engine_process(config, 3, f"ipc://{tmp_path}", timeout=60)


def test_unprotected_tcp_engine_sockets_are_refused(tiny_qwen3):
    with pytest.raises(ValueError, match="engine address must be ipc://DIR"):
        start_engine_process(EngineConfig.from_kwargs(str(tiny_qwen3)), 0, "tcp://127.0.0.1")
