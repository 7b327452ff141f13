"""A prefill rank's KV listener: decode ranks pull held blocks from it.

Bound on the node's own address (the internal host; `BASTION_HOST_IP` on a multi-node
deployment) at port 0, the real endpoint reported in the engine's start-up handshake. CurveZMQ:
its own context and ZAP gate admit only the deployment's engine keys, so a client without them
never completes a handshake and learns nothing. Each layer's blocks go out as one message: a
typed header and the keys' and values' raw bytes (gathered once from the cache, sent without a
further copy). A frame that does not decode is dropped, and so is a message of more frames than
a request has (`MAX_FRAMES`: read one frame at a time, never held); the listener keeps serving.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import torch
import zmq

from bastion.engine.disagg import wire
from bastion.engine.disagg.leases import Leases
from bastion.transport.addresses import url_host
from bastion.transport.channel import CurveGate, CurveKeyPair, bind, curve_server

logger = logging.getLogger(__name__)

Caches = Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]  # each layer's (keys, values) cache
MAX_FRAMES = 2  # a request as the ROUTER reads it: the peer's identity, one header


class KvServer:
    """A thread serving pulls and releases on a CURVE ROUTER socket."""

    def __init__(self, leases: Leases, caches: Caches, keys: CurveKeyPair, peers: list[bytes],
                 host: str) -> None:
        self.leases, self.caches = leases, caches
        self.ctx = zmq.Context()
        self.gate = CurveGate(self.ctx, set(peers))
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_HEADER_BYTES)
        if ":" in host:
            self.sock.ipv6 = True
        curve_server(self.sock, keys)
        self.endpoint = bind(self.sock, f"tcp://{url_host(host)}:0")
        self.sent_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="kv-server")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(200):
                continue
            frames = self._receive()
            if frames is None:
                continue
            peer, message = frames[0], wire.decode(frames[1])
            try:
                if isinstance(message, wire.KvPull):
                    self._send_blocks(peer, message)
                elif isinstance(message, wire.KvRelease):
                    self.leases.release(message.request_id, message.lease_id)
                elif message is not None:
                    logger.warning("KV channel: ignored an unexpected %s", type(message).__name__)
            except zmq.ZMQError as exc:
                logger.warning("KV channel: a reply failed: %s", exc)

    def _receive(self) -> list[bytes] | None:
        """One message's frames, or None (logged) when it has not `MAX_FRAMES`: the frames past
        the bound are read and let go one at a time (a peer's million-frame message costs time,
        never memory here)."""
        frames, extra = [self.sock.recv()], 0
        while self.sock.getsockopt(zmq.RCVMORE):
            frame = self.sock.recv()
            if len(frames) < MAX_FRAMES:
                frames.append(frame)
            else:
                extra += 1
        if len(frames) + extra != MAX_FRAMES:
            logger.warning("KV channel: dropped a message of %d frames (a request has %d)",
                           len(frames) + extra, MAX_FRAMES)
            return None
        return frames

    def _send_blocks(self, peer: bytes, pull: wire.KvPull) -> None:
        handle = self.leases.pin(pull.request_id, pull.lease_id)
        if isinstance(handle, str):
            self.sock.send_multipart([peer, wire.encode(wire.KvRefused(handle))])
            return
        try:
            ids = torch.tensor(handle.block_ids, dtype=torch.long)
            layers, nbytes = self.caches(), 0
            for i, (k_cache, v_cache) in enumerate(layers):
                keys, values = k_cache.index_select(1, ids), v_cache.index_select(1, ids)
                header = wire.KvLayer(i, str(keys.dtype).removeprefix("torch."), list(keys.shape))
                self.sock.send_multipart([peer, wire.encode(header), _raw(keys), _raw(values)], copy=False)
                nbytes += 2 * keys.numel() * keys.element_size()
            self.sock.send_multipart([peer, wire.encode(wire.KvDone(len(layers), nbytes))])
            self.sent_bytes += nbytes
        finally:
            self.leases.unpin(pull.lease_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)
        self.gate.stop()
        self.ctx.term()


def _raw(tensor: torch.Tensor):
    """The tensor's bytes as a buffer zmq can send without copying (it keeps the array alive)."""
    return tensor.contiguous().view(torch.uint8).numpy()
