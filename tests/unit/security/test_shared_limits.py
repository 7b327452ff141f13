"""The limits service and two clients (two API servers) over its real ipc socket."""
from __future__ import annotations

import asyncio

from bastion.config.security import Limits
from bastion.security.ratelimit import Limiter
from bastion.security.shared_limits import LimitsClient, LimitsService


def test_any_api_server_reads_the_queue_length_as_it_is_now(tmp_path):
    """One slot: A's request runs, B's waits. A heard no change since its own admission, yet
    asked it reads 1 waiting; once A's request ends and B's runs, both read 0."""
    service = LimitsService(Limiter(max_seqs=1, max_queued=4), str(tmp_path))

    async def scenario() -> list:
        a, b = LimitsClient(str(tmp_path)), LimitsClient(str(tmp_path))
        heard: dict[str, list[int]] = {"a": [], "b": []}
        a.on_queue_length, b.on_queue_length = heard["a"].append, heard["b"].append
        try:
            running = await a.acquire("a", Limits(), 10)
            waiting = asyncio.ensure_future(b.acquire("b", Limits(), 10))
            for _ in range(200):  # bounded: B's request reaches the service
                if await a.queue_length() == 1:
                    break
                await asyncio.sleep(0.01)
            seen = [await a.queue_length(), heard["a"][-1]]
            a.release(running, 10)
            admitted = await asyncio.wait_for(waiting, 5)
            seen += [await a.queue_length(), await b.queue_length()]
            b.release(admitted, 10)
            return seen
        finally:
            a.close()
            b.close()

    try:
        assert asyncio.run(scenario()) == [1, 1, 0, 0]
    finally:
        service.stop()
