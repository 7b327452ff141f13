"""The load generator sends a request once more when the server closed the kept-alive connection
it went out on (llama.cpp's server drops idle connections after 5 s), and only then."""
from __future__ import annotations

import asyncio

from bastion.bench.load import LoadSettings, run_load
from bastion.bench.workloads import BenchRequest

STREAM = (b'data: {"choices":[{"text":"a","finish_reason":null}]}\n\n'
          b'data: {"choices":[{"text":"b","finish_reason":"length"}],"usage":{"completion_tokens":2}}\n\n'
          b"data: [DONE]\n\n")


async def _serve(drop_first: int) -> tuple[list[dict], float]:
    """A loopback HTTP server: the first `drop_first` connections are closed unanswered once the
    request head arrived; later ones get a 2-token SSE stream."""
    seen = {"connections": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        await reader.readuntil(b"\r\n\r\n")
        if seen["connections"] > drop_first:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + STREAM)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        settings = LoadSettings(f"http://127.0.0.1:{port}", "m", concurrency=1, timeout=10)
        results, _ = await run_load(settings, [BenchRequest([1, 2, 3], 2)])
    return results, seen["connections"]


def test_a_request_dropped_unanswered_is_sent_once_more():
    results, connections = asyncio.run(_serve(drop_first=1))
    assert connections == 2
    assert results[0].ok and results[0].output_tokens == 2


def test_a_server_that_keeps_dropping_is_an_error_after_one_retry():
    results, connections = asyncio.run(_serve(drop_first=5))
    assert connections == 2
    assert not results[0].ok and results[0].error.startswith("RemoteProtocolError")
