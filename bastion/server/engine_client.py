"""The API server's side of the engine wire: send requests to ranks, route results back.

One PUSH socket per engine rank; one PULL socket this API server binds in the private ipc
directory, announced to every engine with a `ClientHello`. Results land in one asyncio queue
per request. When the launcher says a rank is down, every request on it ends with an error.

Disaggregated serving (some ranks `--kv-role prefill`, the others `decode`): a request goes
first to a prefill rank, with `kv_hold`; the delta of its first token carries a `KvHandle`,
and the request moves to a decode rank with a `KvSource` naming that prefill rank's KV
listener as the launcher reported it (docs/disaggregation.md). A handle that goes no further
(the client has gone, no decode rank is up, the send fails) is released on its prefill rank at
once (`KvLeaseRelease`): no lease waits out `--kv-lease-s` for a pull that will never come.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import msgspec
import zmq
import zmq.asyncio

from bastion.config.deployment import InternalConfig
from bastion.sampling_params import SamplingParams
from bastion.server.balancer import RankBalancer
from bastion.transport import channel
from bastion.transport.child_pipe import EngineEndpoint
from bastion.transport.messages import (AbortRequests, ClientHello, EngineOutputs, EngineRequest,
                                        KvHandle, KvLeaseRelease, KvPeers, KvSource, MAX_FRAME_BYTES,
                                        RequestError, TokenDelta, decode, encode)
from bastion.transport.rank_state import RankState

logger = logging.getLogger(__name__)


class RankUnavailable(Exception):
    """The request's rank went down (or none is up); the client gets a 503."""


@dataclass
class RankView:
    """What this API server knows of one engine rank."""

    index: int
    endpoint: str
    server_key: bytes = b""
    state: RankState = RankState.READY  # ready | waiting (its node has not registered) | restarting | failed
    restarts: int = 0
    reason: str = ""
    requests: set[str] = field(default_factory=set)
    kv_endpoint: str = ""  # its KV listener (a prefill rank)
    kv_key: bytes = b""
    role: str = "both"

    @property
    def alive(self) -> bool:
        return self.state == "ready"


class EngineClient:
    """Async client of every engine rank, for one API-server process."""

    def __init__(self, client_index: int, engines: list[EngineEndpoint], ipc_dir: str,
                 affinity_tokens: int = 2048, internal: InternalConfig = InternalConfig(),
                 keys: channel.ChannelKeys | None = None) -> None:
        self.client_index = client_index
        self.ranks = [RankView(e.index, e.input_endpoint, e.server_key, kv_endpoint=e.kv_endpoint,
                               kv_key=e.kv_key, role=e.kv_role) for e in engines]
        self.balancer = RankBalancer(len(engines), affinity_tokens)
        self.prefill_ranks = {r.index for r in self.ranks if r.role == "prefill"}
        self.decode_ranks = {r.index for r in self.ranks if r.role == "decode"}
        self.held: dict[str, EngineRequest] = {}  # on a prefill rank, until its handle comes
        self.ctx = zmq.asyncio.Context()
        self.listener = channel.Listener(self.ctx, internal, ipc_dir, keys)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.output_endpoint = self.listener.bind(self.pull, f"api-{client_index}-out")
        self.pushes = []
        self.queues: dict[str, asyncio.Queue] = {}
        self.rank_of: dict[str, int] = {}
        self.load_listeners: list = []
        self.pull_listeners: list = []  # called with (rank, [seconds of each KV pull])
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        for rank in self.ranks:
            push = self.ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            self.pushes.append(push)
            if not rank.endpoint:  # a rank on another node, until that node registers
                rank.state, rank.reason = RankState.WAITING, "its node has not registered yet"
                self.balancer.alive[rank.index] = False
                continue
            self.listener.connect(push, rank.endpoint, rank.server_key)
            await push.send(encode(ClientHello(self.client_index, self.output_endpoint,
                                               self.listener.public)))
        await self._send_kv_peers()
        self._reader = asyncio.create_task(self._read())

    async def _send_kv_peers(self) -> None:
        """Tell each prefill rank the engine keys its KV listener admits: every rank's key now,
        with its restarts (the rank's own key among them; a rank on a node that has not
        registered yet has none, and is named when it does)."""
        peers = [(r.index, r.restarts, r.kv_key) for r in self.ranks if r.kv_key]
        for rank in self.ranks:
            if rank.role == "prefill" and rank.alive and peers:
                await self.pushes[rank.index].send(encode(KvPeers(peers)))

    async def _read(self) -> None:
        while True:
            message = decode(await self.pull.recv())
            if isinstance(message, EngineOutputs):
                await self._on_outputs(message)
            elif isinstance(message, RequestError):
                self._deliver(message.request_id, message)

    async def _on_outputs(self, message: EngineOutputs) -> None:
        rank, load = message.engine_index, message.load
        if load is not None:
            self.balancer.on_load(rank, load.outstanding_tokens, load.num_waiting)
            for listener in self.load_listeners:
                listener(rank, load)
        if message.kv_pull_seconds:
            for listener in self.pull_listeners:
                listener(rank, message.kv_pull_seconds)
        for out in message.outputs:
            self._deliver(out.request_id, out)
            if out.kv_handle is not None:
                await self._hand_over(out, rank)

    @property
    def disaggregated(self) -> bool:
        """Prefill and decode run on different ranks."""
        return bool(self.prefill_ranks and self.decode_ranks)

    async def _hand_over(self, delta: TokenDelta, prefill: int) -> None:
        """Prefill rank `prefill` holds a request's KV: send the request on to a decode rank, or
        release the lease at once when the handle goes no further."""
        request_id, handle = delta.request_id, delta.kv_handle
        request = self.held.pop(request_id, None)
        if request is None:  # the client has gone (aborted or ended)
            return await self._release_lease(prefill, handle)
        rank = self.balancer.choose(request.prompt_token_ids, request.cache_salt, self.decode_ranks,
                                    work=max(1, (request.params.max_tokens or 1) - 1))
        if rank is None:
            return await self._not_passed_on(prefill, delta, "no decode rank is available")
        self.ranks[prefill].requests.discard(request_id)
        self.rank_of[request_id] = rank
        self.ranks[rank].requests.add(request_id)
        source = self.ranks[prefill]
        kv_source = KvSource(handle, source.kv_endpoint, source.kv_key, delta.new_token_ids)
        try:
            await self.pushes[rank].send(encode(msgspec.structs.replace(request, kv_source=kv_source, kv_hold=False)))
        except zmq.ZMQError as exc:
            self.ranks[rank].requests.discard(request_id)
            await self._not_passed_on(prefill, delta, f"engine rank {rank} could not be reached ({exc})")

    async def _not_passed_on(self, prefill: int, delta: TokenDelta, reason: str) -> None:
        """The request of `delta` ends here: its lease goes at once, its client gets a 503."""
        self.rank_of.pop(delta.request_id, None)
        self.ranks[prefill].requests.discard(delta.request_id)
        await self._release_lease(prefill, delta.kv_handle)
        self._deliver(delta.request_id, RankUnavailable(reason))

    async def _release_lease(self, index: int, handle: KvHandle) -> None:
        """Tell prefill rank `index` to free the blocks `handle` names now (unless it is down:
        its leases went with it)."""
        if not 0 <= index < len(self.ranks) or not self.ranks[index].alive:
            return
        try:
            await self.pushes[index].send(encode(KvLeaseRelease(handle.request_id, handle.lease_id)))
        except zmq.ZMQError as exc:
            logger.warning("could not release a KV lease on engine rank %d: %s", index, exc)

    def _deliver(self, request_id: str, item: TokenDelta | RequestError) -> None:
        queue = self.queues.get(request_id)
        if queue is not None:
            queue.put_nowait(item)

    async def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                     cache_salt: str | None = None) -> tuple[int, asyncio.Queue]:
        """Send to the chosen rank; results (or a RankUnavailable) arrive on the queue.
        Disaggregated: a prefill rank first (one sequence, no structured outputs; else, or with
        no prefill rank up, a decode rank does it all)."""
        hold = self.disaggregated and params.n == 1 and params.structured_outputs is None
        rank = self.balancer.choose(prompt_ids, cache_salt, self.prefill_ranks) if hold else None
        if rank is None:
            hold = False
            rank = self.balancer.choose(prompt_ids, cache_salt, self.decode_ranks if self.disaggregated else None)
        if rank is None:
            raise RankUnavailable("no engine rank is available")
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[request_id] = queue
        self.rank_of[request_id] = rank
        self.ranks[rank].requests.add(request_id)
        request = EngineRequest(request_id, prompt_ids, params, cache_salt, self.client_index, kv_hold=hold)
        if hold:
            self.held[request_id] = request
        await self.pushes[rank].send(encode(request))
        return rank, queue

    def release(self, request_id: str) -> None:
        """Forget a request that has ended (late engine messages for it are dropped)."""
        self.queues.pop(request_id, None)
        self.held.pop(request_id, None)
        rank = self.rank_of.pop(request_id, None)
        if rank is not None:
            self.ranks[rank].requests.discard(request_id)

    async def abort(self, request_id: str, sequences: list[int] | None = None) -> None:
        """Stop a whole request, or some of its sequences, in its engine."""
        self.held.pop(request_id, None)  # NOTE: before any await: a handle that comes now is released
        rank = self.rank_of.get(request_id)
        if rank is None or not self.ranks[rank].alive:
            return
        message = (AbortRequests([request_id]) if sequences is None
                   else AbortRequests(sequences=[(request_id, i) for i in sequences]))
        await self.pushes[rank].send(encode(message))

    def rank_down(self, index: int, reason: str, state: RankState = RankState.RESTARTING,
                  restarts: int = 0) -> None:
        """Mark a rank dead and end each of its requests with RankUnavailable."""
        rank = self.ranks[index]
        rank.reason, rank.state, rank.restarts = reason, state, restarts
        self.balancer.alive[index] = False
        logger.error("engine rank %d is down (%s); failing its %d requests", index, reason,
                     len(rank.requests))
        for request_id in list(rank.requests):
            self._deliver(request_id, RankUnavailable(f"engine rank {index} went down: {reason}"))

    async def rank_up(self, index: int, endpoint: str, server_key: bytes, restarts: int,
                      kv_endpoint: str = "", kv_key: bytes = b"", kv_role: str = "both") -> None:
        """A rank (restarted, or registered from another node) is ready at `endpoint`: connect, say
        hello, route work to it."""
        rank = self.ranks[index]
        self.pushes[index].close(0)
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        self.listener.connect(push, endpoint, server_key)
        await push.send(encode(ClientHello(self.client_index, self.output_endpoint, self.listener.public)))
        self.pushes[index] = push
        rank.endpoint, rank.server_key, rank.restarts = endpoint, server_key, restarts
        rank.kv_endpoint, rank.kv_key = kv_endpoint, kv_key
        if kv_role != rank.role:  # a rank on another node says its role when it registers
            rank.role = kv_role
            self.prefill_ranks = {r.index for r in self.ranks if r.role == "prefill"}
            self.decode_ranks = {r.index for r in self.ranks if r.role == "decode"}
        rank.state, rank.reason = RankState.READY, ""
        self.balancer.revive(index)
        await self._send_kv_peers()  # NOTE: a restarted Ray rank has a new keypair
        logger.warning("engine rank %d is ready at %s (restart %d)", index, endpoint, restarts)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for sock in [self.pull, *self.pushes]:
            sock.close(0)
        self.listener.stop()
        self.ctx.term()
