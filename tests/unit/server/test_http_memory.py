"""The API server's memory keeper: a smaller asyncio TLS read buffer, and dead cycles collected."""
from __future__ import annotations

import asyncio
import gc
from asyncio import sslproto

from bastion.server.http.memory import TLS_READ_BUFFER, MemoryKeeper, tune_tls_buffers


def test_tls_read_buffer_is_lowered():
    before = sslproto.SSLProtocol.max_size
    try:
        tune_tls_buffers()
        assert sslproto.SSLProtocol.max_size == TLS_READ_BUFFER < before
    finally:
        sslproto.SSLProtocol.max_size = before


def test_keeper_collects_a_dead_cycle_and_stops():
    async def main() -> int:
        keeper = MemoryKeeper(interval_s=0.01).start()
        try:
            node: list = []
            node.append(node)  # a cycle nothing else holds, like a failed handshake's protocol
            del node
            await asyncio.sleep(0.1)
            return keeper.collected
        finally:
            keeper.stop()
            gc.unfreeze()

    assert asyncio.run(main()) >= 1
