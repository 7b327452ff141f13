"""An engine rank's part in disaggregated serving; `EngineCore` asks it at a few points.

* prefill (or both): a request sent with `kv_hold` computes its prompt and first token, then is
  handed over: its blocks stay held under a lease (leases.py) for a decode rank to pull from
  this rank's KV listener (kv_server.py), and the first token's delta carries the handle.
* decode (or both): a request sent with a `KvSource` gets blocks for its prompt, pulls the KV
  into them (kv_puller.py) and joins the running batch at its next token; if the pull fails
  it is recomputed here (`--kv-load-failure-policy recompute`) or fails with a 503 (`fail`).

Everything here runs on the engine thread except the server's and the puller's own threads,
which meet it through the lease table and the results queue.
"""
from __future__ import annotations

import logging
import queue
from dataclasses import dataclass, field
from typing import Callable

from bastion.config.engine import KvTransferConfig
from bastion.engine.disagg.handle import KvHandle, KvSource
from bastion.engine.disagg.kv_puller import KvPuller, PullResult
from bastion.engine.disagg.kv_server import Caches, KvServer
from bastion.engine.disagg.leases import Leases
from bastion.engine.kv_cache import BlockManager
from bastion.engine.outputs import FinishReason
from bastion.engine.request import Request, RequestStatus
from bastion.engine.scheduler import Scheduler
from bastion.transport.channel import CurveKeyPair

logger = logging.getLogger(__name__)


@dataclass
class TransferCounts:
    """Since the rank started: pulls done, their bytes, pulls that fell back, leases expired."""

    transfers: int = 0
    nbytes: int = 0
    fallbacks: int = 0
    pull_seconds: list[tuple[str, float]] = field(default_factory=list)  # (request, s) not yet reported


class KvTransfer:
    """The lease table and KV listener of a prefill rank, the puller of a decode rank."""

    def __init__(self, config: KvTransferConfig, rank: int, blocks: BlockManager, scheduler: Scheduler,
                 caches: Caches, keys: CurveKeyPair, peers: list[bytes], host: str,
                 wake: Callable[[], None]) -> None:
        self.config, self.blocks, self.scheduler = config, blocks, scheduler
        self.counts = TransferCounts()
        self.leases: Leases | None = None
        self.server: KvServer | None = None
        self.puller: KvPuller | None = None
        self._results: queue.Queue[PullResult] = queue.Queue()
        self._pulling: dict[str, Request] = {}  # pulls under way, by request
        self._failed: list[tuple[str, str, int]] = []
        self._wake = wake
        self._launch_peers = set(peers)  # the launcher's: fixed keys (Ray ranks get none here)
        self._ranks_keys: dict[int, tuple[int, bytes]] = {}  # from KvPeers: rank -> (restarts, key)
        if config.role in ("prefill", "both"):
            self.leases = Leases(rank, config.lease_s, wake)
            self.server = KvServer(self.leases, caches, keys, peers, host)
        if config.role in ("decode", "both"):
            self.puller = KvPuller(keys, caches, self._pulled)

    @property
    def endpoint(self) -> str:
        """The KV listener's endpoint ('' on a decode-only rank)."""
        return self.server.endpoint if self.server is not None else ""

    def admit(self, peers: list[tuple[int, int, bytes]]) -> None:
        """Let the engines of the deployment pull from this rank's KV listener: the launcher's
        `peers` (fixed for the launch), and each rank's latest key of `(rank, restarts, key)`
        (KvPeers). A rank's key from before a later restart is admitted no more."""
        if self.server is None:
            return
        for rank, restarts, key in peers:
            known = self._ranks_keys.get(rank)
            if len(key) == 40 and (known is None or restarts >= known[0]):  # a Z85 public key
                self._ranks_keys[rank] = (restarts, key)
        self.server.gate.admit_only(self._launch_peers | {key for _, key in self._ranks_keys.values()})

    def hand_over(self, req: Request) -> KvHandle:
        """Prefill side: take `req` out of the batch with its blocks held; the handle names them."""
        if self.leases is None:
            raise ValueError("this rank does not serve KV (--kv-role decode)")
        self.scheduler.running.remove(req)
        req.status = RequestStatus.FINISHED  # its sequence continues on a decode rank
        return self.leases.hold(req)

    def start_pull(self, req: Request, source: KvSource) -> None:
        """Decode side: blocks for the prompt, then pull its KV into them (or recompute at once)."""
        handle = source.handle
        if self.puller is None:
            return self._fall_back(req, "this rank pulls no KV")  # NOTE: the API server sends none here
        if handle.num_tokens != req.num_prompt_tokens or not self.blocks.allocate(req, handle.num_tokens):
            self.puller.release(source)  # not pulled: the prefill rank frees the blocks now
            reason = "no free KV blocks for the pull" if handle.num_tokens == req.num_prompt_tokens else (
                "the handle does not match the prompt")
            return self._fall_back(req, reason)
        self._pulling[req.request_id] = req
        self.puller.pull(source, list(req.block_ids))

    def _pulled(self, result: PullResult) -> None:  # the puller's thread
        self._results.put(result)
        self._wake()

    def poll(self) -> list[tuple[str, str, int]]:
        """Engine thread, before each step: free released and expired leases, start pulled
        requests; return `(request_id, message, status)` of requests that failed."""
        if self.leases is not None:
            for req in self.leases.reap():
                self.blocks.free(req)
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                break
            req = self._pulling.pop(result.request_id)
            if req.is_finished:  # aborted while its blocks were being written
                self.blocks.free(req)
            elif result.ok:
                self._join_batch(req, result)
            else:
                self.blocks.free(req)
                self._fall_back(req, result.reason)
        failed, self._failed = self._failed, []
        return failed

    def _join_batch(self, req: Request, result: PullResult) -> None:
        req.num_computed_tokens = req.num_prompt_tokens
        self.blocks.register_computed(req)
        req.status = RequestStatus.RUNNING
        self.scheduler.running.append(req)
        self.counts.transfers += 1
        self.counts.nbytes += result.nbytes
        self.counts.pull_seconds.append((req.request_id, result.seconds))

    def _fall_back(self, req: Request, reason: str) -> None:
        """Recompute `req` here, or fail it (a 503) at the next `poll`, as the policy says."""
        self.counts.fallbacks += 1
        if self.config.load_failure_policy == "recompute":
            logger.warning("request %s: recomputing its prompt here (%s)", req.request_id, reason)
            self.scheduler.add(req)
            return
        req.status, req.finish_reason = RequestStatus.FINISHED, FinishReason.ABORT
        self._failed.append((req.request_id, "the prompt's KV could not be loaded from its prefill "
                             f"rank: {reason}", 503))

    def release(self, request_id: str, lease_id: str | None = None) -> None:
        """Prefill side: free the blocks held for `request_id` (under `lease_id`, when given) once
        no pull is sending them; its handle goes no further (the API server says so, or the
        request was aborted after its hand-over)."""
        if self.leases is not None:
            self.leases.release(request_id, lease_id)

    def abort(self, req: Request) -> bool:
        """End a request whose pull is under way (its blocks are freed when the pull ends)."""
        if req.request_id not in self._pulling or req.is_finished:
            return False
        req.status, req.finish_reason = RequestStatus.FINISHED, FinishReason.ABORT
        return True

    @property
    def ready(self) -> bool:
        """Work for the engine thread now: pull results or failures to take, leases to free."""
        return (bool(self._failed) or not self._results.empty()
                or (self.leases is not None and self.leases.due()))

    @property
    def pending(self) -> bool:
        """Requests still to come out of here: pulls under way, or `ready`."""
        return bool(self._pulling) or self.ready

    def wake_in(self) -> float | None:
        """Seconds until a lease runs out (the engine loop wakes then to free it)."""
        return self.leases.next_deadline() if self.leases is not None else None

    def take_pull_seconds(self) -> list[tuple[str, float]]:
        taken, self.counts.pull_seconds = self.counts.pull_seconds, []
        return taken

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.puller is not None:
            self.puller.close()
