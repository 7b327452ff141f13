"""The API server's side of disaggregated serving (`EngineClient`) on real ZMQ sockets: the test
plays a prefill rank and a decode rank (PULL sockets where the engines listen, a PUSH to the API
server's result socket). A handle the API server does not pass on to a decode rank is released
on its prefill rank at once: the client has gone (before or after the handle came), no decode
rank is up, the send to the decode rank fails. The prefill rank hears every rank's KV key with
its restarts (KvPeers), again when a rank comes back with a new one."""
from __future__ import annotations

import asyncio
import time

import pytest
import zmq
import zmq.asyncio

from bastion.sampling_params import SamplingParams
from bastion.server.engine_client import EngineClient, RankUnavailable
from bastion.transport.child_pipe import EngineEndpoint
from bastion.transport.messages import (AbortRequests, ClientHello, EngineOutputs, EngineRequest, KvHandle,
                                        KvLeaseRelease, KvPeers, TokenDelta, decode, encode)

LEASE = "5" * 32


class Ranks:
    """Rank 0 (prefill) and rank 1 (decode) as the API server sees them: the test reads what it
    sends each, and sends it the prefill rank's outputs."""

    def __init__(self, folder) -> None:
        self.ctx = zmq.asyncio.Context()
        self.endpoints = [EngineEndpoint(0, f"ipc://{folder}/e0", kv_endpoint="tcp://127.0.0.1:9",
                                         kv_key=b"p" * 40, kv_role="prefill"),
                          EngineEndpoint(1, f"ipc://{folder}/e1", kv_key=b"d" * 40, kv_role="decode")]
        self.inputs = []
        for endpoint in self.endpoints:
            sock = self.ctx.socket(zmq.PULL)
            sock.bind(endpoint.input_endpoint)
            self.inputs.append(sock)
        self.outputs = self.ctx.socket(zmq.PUSH)
        self.outputs.setsockopt(zmq.LINGER, 0)

    async def received(self, rank: int, wait_s: float = 0.3) -> list:
        """What rank `rank` has been sent (waiting up to `wait_s` for each next message)."""
        got = []
        while await self.inputs[rank].poll(int(wait_s * 1000)):
            got.append(decode(await self.inputs[rank].recv()))
        return got

    async def hand_over(self, request_id: str) -> None:
        """The prefill rank reports the first token with the handle of its held blocks."""
        handle = KvHandle(0, request_id, LEASE, [3, 4], 20, time.time() + 600)
        await self.outputs.send(encode(EngineOutputs(0, [TokenDelta(request_id, 0, [42], kv_handle=handle)])))

    def close(self) -> None:
        for sock in [*self.inputs, self.outputs]:
            sock.close(0)
        self.ctx.term()


def _run(folder, scenario) -> None:
    async def main() -> None:
        ranks = Ranks(folder)
        client = EngineClient(0, ranks.endpoints, str(folder))
        try:
            await client.start()
            ranks.outputs.connect(client.output_endpoint)
            hello = ClientHello(0, client.output_endpoint, b"")
            assert await ranks.received(0) == [hello, KvPeers([(0, 0, b"p" * 40), (1, 0, b"d" * 40)])]
            assert await ranks.received(1) == [hello]
            await asyncio.wait_for(scenario(client, ranks), 10)
        finally:
            client.close()
            ranks.close()
    asyncio.run(main())


async def _submit(client: EngineClient, ranks: Ranks, request_id: str) -> asyncio.Queue:
    _, queue = await client.submit(request_id, list(range(5, 25)), SamplingParams(max_tokens=8))
    [request] = await ranks.received(0)
    assert isinstance(request, EngineRequest) and request.kv_hold
    return queue


@pytest.mark.parametrize("ended", [True, False], ids=["ended", "abort-in-flight"])
def test_a_handle_that_comes_after_the_client_left_is_released(tmp_path, ended):
    """`ended`: the request was aborted and forgotten before its handle came; else the abort is
    sent but the request not yet forgotten (Generation.close awaits the abort first)."""
    async def scenario(client: EngineClient, ranks: Ranks) -> None:
        await _submit(client, ranks, "gone")
        await client.abort("gone")
        if ended:
            client.release("gone")
        await ranks.hand_over("gone")
        assert await ranks.received(0) == [AbortRequests(["gone"]), KvLeaseRelease("gone", LEASE)]
        assert await ranks.received(1) == []  # nothing goes on to the decode rank
    _run(tmp_path, scenario)


def test_a_handle_with_no_decode_rank_up_is_released(tmp_path):
    async def scenario(client: EngineClient, ranks: Ranks) -> None:
        client.rank_down(1, "stopped by the test")
        queue = await _submit(client, ranks, "r")
        await ranks.hand_over("r")
        assert (await queue.get()).kv_handle is not None  # the first token
        assert isinstance(await queue.get(), RankUnavailable)
        assert await ranks.received(0) == [KvLeaseRelease("r", LEASE)]
    _run(tmp_path, scenario)


def test_a_handle_whose_send_to_the_decode_rank_fails_is_released_and_the_client_reads_on(tmp_path):
    async def scenario(client: EngineClient, ranks: Ranks) -> None:
        queue = await _submit(client, ranks, "r")
        client.pushes[1].close(0)  # the send to the decode rank fails
        await ranks.hand_over("r")
        assert (await queue.get()).kv_handle is not None
        assert isinstance(await queue.get(), RankUnavailable)
        assert await ranks.received(0) == [KvLeaseRelease("r", LEASE)]
        later = await _submit(client, ranks, "later")  # the results of other requests still arrive
        await ranks.outputs.send(encode(EngineOutputs(0, [TokenDelta("later", 0, [7])])))
        assert (await later.get()).new_token_ids == [7]
    _run(tmp_path, scenario)


def test_kv_peers_follow_a_rank_that_comes_back_with_a_new_key(tmp_path):
    async def scenario(client: EngineClient, ranks: Ranks) -> None:
        assert client.ranks[0].kv_key == b"p" * 40
        client.rank_down(1, "restarting")
        await client.rank_up(1, ranks.endpoints[1].input_endpoint, b"", 1, kv_key=b"n" * 40, kv_role="decode")
        assert await ranks.received(0) == [KvPeers([(0, 0, b"p" * 40), (1, 1, b"n" * 40)])]
        assert [type(m) for m in await ranks.received(1)] == [ClientHello]
    _run(tmp_path, scenario)
