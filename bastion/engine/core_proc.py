"""The engine core as its own process: ZMQ in, engine steps, ZMQ out.

The process binds its input (PULL) and output (PUSH) sockets itself, on ipc paths in a
private 0700 directory (TCP, with CurveZMQ, comes with multi-node serving), and reports the
real endpoints through the start-up handshake on its spawn pipe. An input thread decodes frames into a queue; the main thread adds
and aborts requests and steps the engine; an output thread encodes and sends results.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import queue
import threading

import msgspec
import zmq

from bastion.config import EngineConfig
from bastion.engine.core import EngineCore, EngineOutput
from bastion.transport import channel
from bastion.transport.messages import (AbortRequests, EngineLoad, EngineOutputs, EngineRequest,
                                        Logprob, RequestError, SequenceOutput, decode, encode)

logger = logging.getLogger(__name__)


class EngineReady(msgspec.Struct, tag="ready"):
    engine_index: int
    input_endpoint: str
    output_endpoint: str
    max_model_len: int
    num_kv_blocks: int


class EngineFailed(msgspec.Struct, tag="failed"):
    engine_index: int
    message: str


_handshake = msgspec.msgpack.Decoder(EngineReady | EngineFailed)


class EngineStartError(RuntimeError):
    """An engine process failed or died before it was ready."""


def start_engine_process(config: EngineConfig, index: int, address: str,
                         timeout: float = 120.0) -> tuple[multiprocessing.Process, EngineReady]:
    """Spawn engine `index`, wait for its handshake; raise EngineStartError naming the engine.

    `address` is `ipc://DIR`, a private directory from `channel.private_ipc_dir()`.
    """
    if not address.startswith("ipc://"):
        # NOTE: TCP engine sockets must be CurveZMQ-protected; until the keys are wired through
        # the spawn pipe, only ipc in a private 0700 directory is allowed.
        raise ValueError(f"engine address must be ipc://DIR for now, got {address!r}")
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_engine_process, args=(config, index, address, child),
                       name=f"bastion-engine-{index}", daemon=True)
    proc.start()
    child.close()
    ready = multiprocessing.connection.wait([parent, proc.sentinel], timeout)
    if parent in ready and parent.poll():
        reply = _handshake.decode(parent.recv_bytes())
        if isinstance(reply, EngineReady):
            return proc, reply
        proc.join(5)
        raise EngineStartError(f"engine {index} failed to start: {reply.message}")
    proc.kill()
    proc.join(5)
    why = "did not become ready in time" if not ready else f"exited with code {proc.exitcode}"
    raise EngineStartError(f"engine {index} {why} during start-up")


def run_engine_process(config: EngineConfig, index: int, address: str, conn) -> None:
    """Process entry point; `address` is `ipc://DIR`, a private directory."""
    logging.basicConfig(level=logging.INFO, format=f"engine {index} %(levelname)s %(name)s: %(message)s")
    try:
        engine = EngineCore(config)
    except Exception as exc:  # report, never hang the launcher
        conn.send_bytes(msgspec.msgpack.encode(EngineFailed(index, f"{type(exc).__name__}: {exc}")))
        raise SystemExit(1)
    zctx = zmq.Context()
    pull, push = zctx.socket(zmq.PULL), zctx.socket(zmq.PUSH)
    in_ep = channel.bind(pull, f"{address}/engine-{index}-in")
    out_ep = channel.bind(push, f"{address}/engine-{index}-out")
    conn.send_bytes(msgspec.msgpack.encode(EngineReady(
        index, in_ep, out_ep, engine.limits.max_model_len, engine.limits.num_kv_blocks)))
    conn.close()
    EngineLoop(engine, index, pull, push).run()


class EngineLoop:
    """Moves messages between the sockets and the engine until the input socket closes."""

    def __init__(self, engine: EngineCore, index: int, pull: zmq.Socket, push: zmq.Socket) -> None:
        self.engine, self.index = engine, index
        self.inbox: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._receive, args=(pull,), daemon=True).start()
        threading.Thread(target=self._send, args=(push,), daemon=True).start()

    def _receive(self, pull: zmq.Socket) -> None:
        while True:
            message = decode(pull.recv())
            if message is not None:
                self.inbox.put(message)

    def _send(self, push: zmq.Socket) -> None:
        while True:
            push.send(encode(self.outbox.get()))

    def run(self) -> None:
        while True:
            block = not self.engine.has_unfinished
            try:
                while True:
                    self._handle(self.inbox.get(block=block))
                    block = False
            except queue.Empty:
                pass
            if self.engine.has_unfinished:
                self._publish(self.engine.step())

    def _handle(self, message) -> None:
        if isinstance(message, EngineRequest):
            try:
                self.engine.add_request(message.request_id, message.prompt_token_ids,
                                        message.params, message.cache_salt)
            except ValueError as exc:
                self.outbox.put(RequestError(message.request_id, str(exc)))
        elif isinstance(message, AbortRequests):
            for rid in message.request_ids:
                self._publish(self.engine.abort_request(rid))
        else:
            logger.warning("engine %d ignored an unexpected %s message", self.index, type(message).__name__)

    def _publish(self, outputs: list[EngineOutput]) -> None:
        if outputs:
            self.outbox.put(EngineOutputs(self.index, [_wire(o) for o in outputs], self.load()))

    def load(self) -> EngineLoad:
        sched, blocks = self.engine.scheduler, self.engine.blocks
        outstanding = sum(r.num_tokens - r.num_computed_tokens for r in sched.running)
        outstanding += sum(r.num_tokens for r in sched.waiting)
        rate = blocks.hit_tokens / blocks.query_tokens if blocks.query_tokens else 0.0
        return EngineLoad(len(sched.running), len(sched.waiting), outstanding, blocks.usage, rate)


def _wire(out: EngineOutput) -> SequenceOutput:
    return SequenceOutput(out.request_id, out.index, out.new_token_ids,
                          [Logprob(lp.token_id, lp.logprob, lp.rank, lp.top) for lp in out.new_logprobs],
                          out.finish_reason.value if out.finish_reason else None, out.num_cached_tokens)
