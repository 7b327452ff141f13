"""The engine core in its own process, driven over ZMQ with typed messages."""
from __future__ import annotations

import re
import shutil

import pytest
import zmq

from bastion.config.deployment import InternalConfig
from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.launch.procs import Child, ChildStartError, await_all
from bastion.model.demo import DEMO_MODEL_DIR
from bastion.model.tokenizer import load_tokenizer
from bastion.sampling_params import SamplingParams
from bastion.structured.spec import StructuredOutputs
from bastion.transport import channel
from bastion.transport.child_pipe import EngineSpec
from bastion.transport.messages import (AbortRequests, ClientHello, EngineOutputs, EngineRequest,
                                        RequestError, decode, encode)

PROMPTS = {"a": [5, 6, 7, 8, 9], "b": [40, 41, 42], "c": list(range(100, 130))}


@pytest.fixture(scope="module")
def engine_proc(tiny_qwen3):
    yield from serve_engine(tiny_qwen3)


@pytest.fixture(scope="module")
def demo_engine_proc():
    yield from serve_engine(DEMO_MODEL_DIR)


def serve_engine(model):
    config = EngineConfig.from_kwargs(str(model), dtype="float32", num_kv_blocks=128,
                                      block_size=4, max_model_len=256, num_threads=1)
    folder = channel.private_ipc_dir()
    child = Child("engine-0", EngineSpec(0, config, str(folder), InternalConfig()))
    (ready,) = await_all([child], 120)
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    output = channel.bind(pull, f"ipc://{folder}/client-out")
    push.connect(ready.input_endpoint)
    push.send(encode(ClientHello(0, output)))
    yield config, ready, push, pull
    push.close(0)
    pull.close(0)
    ctx.term()
    child.stop(10)
    shutil.rmtree(folder, ignore_errors=True)
    assert not child.alive()


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
        assert message.load.num_running + message.load.num_waiting <= len(expected)
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
    child = Child("engine-3", EngineSpec(3, config, str(tmp_path), InternalConfig()))
    with pytest.raises(ChildStartError, match="engine-3 failed to start: ModelLoadError: .* is not a directory"):
        await_all([child], 60)
    assert child.wait(10) == 1


def test_an_engine_stops_when_its_launcher_pipe_closes(tiny_qwen3, tmp_path):
    config = EngineConfig.from_kwargs(str(tiny_qwen3), dtype="float32", num_kv_blocks=16, num_threads=1)
    child = Child("engine-0", EngineSpec(0, config, str(tmp_path), InternalConfig()))
    await_all([child], 120)
    child.proc.stdin.close()  # what the kernel does when the launcher dies, even by SIGKILL
    assert child.wait(10) == 1
    child.close()


def test_constrained_requests_over_zmq_and_a_failed_compile_is_a_request_error(demo_engine_proc):
    _, _, push, pull = demo_engine_proc
    email = r"[a-z]{3,8}@[a-z]{2,5}\.com"
    push.send(encode(EngineRequest("bad", [5, 6], SamplingParams(
        structured_outputs=StructuredOutputs(json='{"type": "frob"}')))))
    push.send(encode(EngineRequest("mail", [40, 41, 42], SamplingParams(
        temperature=0, max_tokens=40, structured_outputs=StructuredOutputs(regex=email)))))
    push.send(encode(EngineRequest("free", [5, 6, 7], SamplingParams(temperature=0, max_tokens=5))))
    tokens, reasons, errors = receive_until_finished(pull, {"bad", "mail", "free"})
    assert [(e.request_id, e.message) for e in errors] == [("bad", "structured outputs: Invalid type: frob")]
    assert reasons == {"mail": "stop", "free": "length"}
    assert re.fullmatch(email, load_tokenizer(DEMO_MODEL_DIR).decode(tokens["mail"], skip_special_tokens=True))


def test_a_model_whose_tokenizer_llguidance_cannot_use_refuses_constraints_and_keeps_serving(engine_proc):
    _, _, push, pull = engine_proc
    push.send(encode(EngineRequest("c", [5, 6], SamplingParams(
        structured_outputs=StructuredOutputs(choice=["a", "b"])))))
    push.send(encode(EngineRequest("f", [5, 6], SamplingParams(temperature=0, max_tokens=3))))
    tokens, reasons, errors = receive_until_finished(pull, {"c", "f"})
    assert [e.request_id for e in errors] == ["c"]
    assert errors[0].message.startswith("structured outputs: unavailable for this model: ")
    assert reasons == {"f": "length"}
