"""A decode rank's side of the KV channel: pull a prefill rank's held blocks into its own cache.

One thread, one job at a time: connect a DEALER as a CURVE client (this rank's keys; the
server's key came with the handle from the launcher's table), send `KvPull`, write each layer's
blocks into the blocks this rank allocated, then `KvRelease`. Every header and size is checked
against this rank's own cache before a byte is written; no answer within `timeout_s` fails
the pull (the prefill rank may be gone). A pull that fails, and a handle this rank will not
pull at all (`release`), still send `KvRelease`: the prefill rank frees the blocks at once
rather than when the lease runs out.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import zmq

from bastion.engine.disagg import wire
from bastion.engine.disagg.handle import KvSource
from bastion.engine.disagg.kv_server import Caches
from bastion.transport.channel import CurveKeyPair, curve_client

logger = logging.getLogger(__name__)

PULL_TIMEOUT_S = 1.0
RELEASE_LINGER_MS = 500  # a closed socket still sends its KvRelease for this long (in the background)


@dataclass
class PullResult:
    request_id: str
    ok: bool
    nbytes: int = 0
    seconds: float = 0.0
    reason: str = ""


class PullFailed(Exception):
    """The pull cannot finish; the message says why (for logs and the fail policy's 503)."""


class KvPuller:
    """Pulls one request's blocks at a time on its own thread; reports each with `on_result`."""

    def __init__(self, keys: CurveKeyPair, caches: Caches, on_result: Callable[[PullResult], None],
                 timeout_s: float = PULL_TIMEOUT_S) -> None:
        self.keys, self.caches, self.on_result, self.timeout_s = keys, caches, on_result, timeout_s
        self.ctx = zmq.Context()
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kv-puller")
        self._thread.start()

    def pull(self, source: KvSource, dest_block_ids: list[int]) -> None:
        """Queue a pull of `source` into this rank's blocks `dest_block_ids`."""
        self._jobs.put((source, dest_block_ids))

    def release(self, source: KvSource) -> None:
        """Queue a `KvRelease` of `source`'s lease: this rank will not pull it."""
        self._jobs.put((source, None))

    def close(self) -> None:
        """Stop the thread after its current job and free the context."""
        self._jobs.put(None)
        self._thread.join(5)
        self.ctx.term()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            source, dest = job
            if dest is None:
                self._release(source)
                continue
            started = time.perf_counter()
            try:
                nbytes = self._pull(source, dest)
                result = PullResult(source.handle.request_id, True, nbytes, time.perf_counter() - started)
            except (PullFailed, zmq.ZMQError) as exc:
                logger.warning("KV pull of request %s from rank %d failed: %s",
                               source.handle.request_id, source.handle.rank, exc)
                result = PullResult(source.handle.request_id, False, reason=str(exc))
                self._release(source)  # NOTE: the lease is of no use now (if it still exists)
            self.on_result(result)

    def _connect(self, source: KvSource) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, RELEASE_LINGER_MS)
        if source.endpoint.startswith("tcp://["):
            sock.ipv6 = True
        curve_client(sock, self.keys, source.server_key)
        sock.connect(source.endpoint)
        return sock

    def _release(self, source: KvSource) -> None:
        """Send `KvRelease` for `source`'s lease (the socket closes at once; zmq sends it)."""
        try:
            sock = self._connect(source)
            sock.send(wire.encode(wire.KvRelease(source.handle.request_id, source.handle.lease_id)))
            sock.close()
        except zmq.ZMQError as exc:
            logger.warning("KV release of request %s failed: %s", source.handle.request_id, exc)

    def _pull(self, source: KvSource, dest_ids: list[int]) -> int:
        handle = source.handle
        if len(handle.block_ids) != len(dest_ids):
            raise PullFailed(f"{len(handle.block_ids)} blocks offered for {len(dest_ids)} allocated")
        sock = self._connect(source)
        try:
            sock.send(wire.encode(wire.KvPull(handle.request_id, handle.lease_id)))
            nbytes = self._receive(sock, torch.tensor(dest_ids, dtype=torch.long))
            sock.send(wire.encode(wire.KvRelease(handle.request_id, handle.lease_id)))
            return nbytes
        finally:
            sock.close()

    def _receive(self, sock: zmq.Socket, dest: torch.Tensor) -> int:
        layers, nbytes = self.caches(), 0
        for i in range(len(layers) + 1):
            if not sock.poll(int(self.timeout_s * 1000)):
                raise PullFailed(f"no answer from the prefill rank within {self.timeout_s:g} s")
            frames = sock.recv_multipart(copy=False)
            header = wire.decode(frames[0].buffer)
            if isinstance(header, wire.KvRefused):
                raise PullFailed(f"refused: {header.reason}")
            if i == len(layers):
                if not isinstance(header, wire.KvDone) or header.layers != len(layers):
                    raise PullFailed(f"expected the end of {len(layers)} layers, got {header!r}")
                return nbytes
            if not isinstance(header, wire.KvLayer) or header.layer != i or len(frames) != 3:
                raise PullFailed(f"expected layer {i}, got {header!r}")
            k_cache, v_cache = layers[i]
            for cache, frame in ((k_cache, frames[1]), (v_cache, frames[2])):
                cache.index_copy_(1, dest, _tensor(frame, header, cache, len(dest)))
                nbytes += len(frame.buffer)
        raise AssertionError("unreachable")


def _tensor(frame: zmq.Frame, header: wire.KvLayer, cache: torch.Tensor, blocks: int) -> torch.Tensor:
    """The frame's bytes as blocks shaped like `cache`'s, or PullFailed naming the mismatch."""
    heads, _, block_size, dim = cache.shape
    want = [heads, blocks, block_size, dim]
    dtype = str(cache.dtype).removeprefix("torch.")
    if header.dtype != dtype or header.shape != want:
        raise PullFailed(f"layer {header.layer}: {header.dtype} {header.shape}, this rank holds {dtype} {want}")
    if len(frame.buffer) != heads * blocks * block_size * dim * cache.element_size():
        raise PullFailed(f"layer {header.layer}: {len(frame.buffer)} bytes do not match {want}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only zmq buffer; it is only read
        flat = torch.frombuffer(frame.buffer, dtype=torch.uint8)
    return flat.view(cache.dtype).view(want)
