"""The engine core as its own process: ZMQ in, engine steps, ZMQ out.

The engine binds its input (PULL) socket itself, on an ipc path in the launcher's private 0700
directory or on the internal host's port 0 over TCP with CurveZMQ (admitting only the
deployment's keys), and reports the real endpoint through the start-up handshake. Each front end
(API server) says hello with the endpoint of a PULL socket it bound; the engine connects a PUSH
socket there, so every front end receives the token deltas of its own requests (sent as the
engine made them), plus the engine's load after every step.

Threads: an input thread decodes frames into a queue; the main thread adds and aborts requests
and steps the engine; an output thread owns the PUSH sockets, encodes and sends. The grammar
compiler's threads put a wake-up into the same queue when a compile finishes, so the main thread
blocks (no spinning) while compiles are all it waits on, and wakes the moment one is done.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Callable

import zmq

from bastion.config.deployment import InternalConfig
from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.engine.outputs import TokenDelta
from bastion.transport import channel
from bastion.transport.child_pipe import EngineReady
from bastion.transport.messages import (AbortRequests, ClientHello, EngineLoad, EngineOutputs,
                                        EngineRequest, KvLeaseRelease, KvPeers, MAX_FRAME_BYTES, Message,
                                        RequestError, decode, encode)

logger = logging.getLogger(__name__)

_WAKE = object()  # put into the inbox when a grammar compile finishes


def run_engine(config: EngineConfig, index: int, ipc_dir: str, report: Callable[[EngineReady], None],
               internal: InternalConfig = InternalConfig(), keys: channel.ChannelKeys | None = None) -> None:
    """Load the model, bind the input socket, report ready, then serve until killed. With
    tensor parallelism this process is worker 0 and starts the rank's other workers; if one of
    them ends, so does this process (the launcher then restarts the rank as a whole)."""
    engine = EngineCore(config, private_dir=ipc_dir, own_process=True)
    if engine.workers is not None:
        engine.workers.watch(_worker_ended)
    inbox: queue.Queue = queue.Queue()
    if keys is not None:  # NOTE: a --kv-role other than both takes part in disaggregated serving
        engine.enable_kv_transfer(index, channel.CurveKeyPair(keys.public, keys.secret), keys.peers,
                                  internal.host, lambda: inbox.put(_WAKE))
    zctx = zmq.Context()
    listener = channel.Listener(zctx, internal, ipc_dir, keys)
    pull = zctx.socket(zmq.PULL)
    pull.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    endpoint = listener.bind(pull, f"engine-{index}-in")
    limits = engine.limits
    report(EngineReady(index, endpoint, limits.max_model_len, limits.num_kv_blocks, limits.vocab_size,
                       listener.public, *((engine.kv.endpoint, keys.public) if engine.kv is not None else ("", b"")),
                       config.kv_transfer.role))
    EngineLoop(engine, index, pull, zctx, listener, inbox).run()


def _worker_ended(worker: int, returncode: int) -> None:
    logger.error("tensor-parallel worker %d ended (exit %d): the rank goes down with it", worker, returncode)
    logging.shutdown()
    os._exit(1)


class EngineLoop:
    """Moves messages between the sockets and the engine, forever."""

    def __init__(self, engine: EngineCore, index: int, pull: zmq.Socket, zctx: zmq.Context,
                 listener: channel.Listener, inbox: queue.Queue | None = None) -> None:
        self.engine, self.index, self.listener = engine, index, listener
        self.inbox: queue.Queue = inbox if inbox is not None else queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.clients: set[int] = set()
        engine.on_grammar_done = lambda: self.inbox.put(_WAKE)
        threading.Thread(target=self._receive, args=(pull,), daemon=True).start()
        threading.Thread(target=self._send, args=(zctx,), daemon=True).start()

    def _receive(self, pull: zmq.Socket) -> None:
        while True:
            message = decode(pull.recv())
            if message is not None:
                self.inbox.put(message)

    def _send(self, zctx: zmq.Context) -> None:
        pushes: dict[int, zmq.Socket] = {}
        while True:
            client, item = self.outbox.get()
            if isinstance(item, ClientHello):
                if client in pushes:
                    pushes.pop(client).close(0)
                sock = zctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                self.listener.connect(sock, item.output_endpoint, item.server_key)
                pushes[client] = sock
            elif client in pushes:
                pushes[client].send(encode(item))

    def run(self) -> None:
        while True:
            block = not self.engine.has_work
            try:
                while True:  # NOTE: held KV leases wake the loop when they run out
                    self._handle(self.inbox.get(block=block, timeout=self._lease_due() if block else None))
                    block = False
            except queue.Empty:
                pass
            if self.engine.has_work:
                outputs = self.engine.step()
                for request_id, message, status in self.engine.take_errors():
                    client = self.engine.client_of(request_id)
                    self.outbox.put((client, RequestError(request_id, message, status)))
                self._publish(outputs)

    def _handle(self, message: Message) -> None:
        if message is _WAKE:
            return
        if isinstance(message, EngineRequest):
            self._add(message)
        elif isinstance(message, AbortRequests):
            outputs = [o for rid in message.request_ids for o in self.engine.abort_request(rid)]
            for rid, i in message.sequences:
                outputs += self.engine.abort_request(rid, i)
            self._publish(outputs)
        elif isinstance(message, ClientHello):
            self.clients.add(message.client_index)
            self.outbox.put((message.client_index, message))
        elif isinstance(message, KvPeers):
            if self.engine.kv is not None:
                self.engine.kv.admit(message.peers)
        elif isinstance(message, KvLeaseRelease):  # a handle the API server did not pass on
            if self.engine.kv is not None:
                self.engine.kv.release(message.request_id, message.lease_id)
        else:
            logger.warning("engine %d ignored an unexpected %s message", self.index, type(message).__name__)

    def _lease_due(self) -> float | None:
        kv = self.engine.kv
        wake_in = kv.wake_in() if kv is not None else None
        return None if wake_in is None else wake_in + 0.01

    def _add(self, message: EngineRequest) -> None:
        try:
            self.engine.add_request(message.request_id, message.prompt_token_ids,
                                    message.params, message.cache_salt, message.client_index,
                                    message.kv_hold, message.kv_source)
        except ValueError as exc:
            self.outbox.put((message.client_index, RequestError(message.request_id, str(exc))))
            return
        self._publish([])

    def _publish(self, outputs: list[TokenDelta]) -> None:
        """Send each client its requests' deltas, and every client the current load.

        NOTE: called right after the engine call that made `outputs` (before the next step), so
        the engine still knows the client of a request those deltas ended.
        """
        by_client: dict[int, list[TokenDelta]] = {c: [] for c in self.clients}
        for out in outputs:
            by_client.setdefault(self.engine.client_of(out.request_id), []).append(out)
        pulls: dict[int, list[float]] = {}
        for request_id, seconds in self.engine.kv.take_pull_seconds() if self.engine.kv is not None else ():
            if self.engine.owns(request_id):
                pulls.setdefault(self.engine.client_of(request_id), []).append(seconds)
        load = self.load()
        for client, deltas in by_client.items():
            self.outbox.put((client, EngineOutputs(self.index, deltas, load, pulls.get(client, []))))

    def load(self) -> EngineLoad:
        """What the balancer and the metrics read: queue lengths, tokens still to compute, KV use."""
        sched, blocks = self.engine.scheduler, self.engine.blocks
        outstanding = sum(r.num_tokens - r.num_computed_tokens for r in sched.running)
        outstanding += sum(r.num_tokens for r in sched.waiting)
        rate = blocks.hit_tokens / blocks.query_tokens if blocks.query_tokens else 0.0
        waiting = len(sched.waiting) + self.engine.num_compiling  # a compiling request waits too
        kv = self.engine.kv
        if kv is None:
            return EngineLoad(len(sched.running), waiting, outstanding, blocks.usage, rate, sched.num_preemptions)
        counts, leases = kv.counts, kv.leases
        return EngineLoad(len(sched.running), waiting, outstanding, blocks.usage, rate, sched.num_preemptions,
                          counts.transfers, counts.nbytes, counts.fallbacks,
                          leases.expired if leases is not None else 0, len(leases) if leases is not None else 0)
