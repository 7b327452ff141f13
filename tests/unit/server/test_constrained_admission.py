"""A constrained request counts against its caller before its grammar is compiled: the real
front end, the real limits service (over its ipc socket) and real check workers. A refused
constraint gives its ticket back at once but keeps its place in the request rate; a request
cancelled while its compile waits or runs (the client left) gives its ticket back too."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from types import SimpleNamespace

import pytest

from bastion.config.engine import StructuredOutputConfig
from bastion.config.security import Limits
from bastion.config.server import ServerConfig
from bastion.model.demo import DEMO_MODEL_DIR
from bastion.model.tokenizer import load_tokenizer
from bastion.security.principal import Principal
from bastion.security.ratelimit import Limiter
from bastion.security.shared_limits import LimitsClient, LimitsService
from bastion.server.caller import Caller
from bastion.server.frontend import Frontend
from bastion.server.grammar_check import GrammarChecker
from bastion.server.http.errors import APIError
from bastion.server.routes.protocol import CompletionRequest
from bastion.structured.tokenizer import tokenizer_json

RATE = 3


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEMO_MODEL_DIR)


def caller(limits: Limits) -> Caller:
    return Caller.of(Principal("k", "key", "t", frozenset({"inference"}), None, limits))


def body(regex: str, prompt: str | list[str] = "hello") -> CompletionRequest:
    return CompletionRequest(model="m", prompt=prompt, max_tokens=2, guided_regex=regex)


@contextlib.asynccontextmanager
async def front_end(tokenizer, tmp_path, pool_size: int = 2):
    """A Frontend over a real limits service and real check workers; no engine (nothing here
    is submitted: every request is refused or cancelled before it would be)."""
    limiter = Limiter(max_seqs=8)
    service = LimitsService(limiter, str(tmp_path))
    limits = LimitsClient(str(tmp_path))
    structured = StructuredOutputConfig(structured_output_compile_timeout=60)
    grammar = GrammarChecker(structured, tokenizer_json(tokenizer), len(tokenizer),
                             [tokenizer.eos_token_id], pool_size=pool_size)
    engines = SimpleNamespace(ranks=[SimpleNamespace(alive=True)])  # admit() asks whether one is up
    config = ServerConfig(served_model_names=("m",), structured=structured)
    frontend = Frontend(config, engines, tokenizer, max_model_len=64, vocab_size=len(tokenizer),
                        limits=limits, grammar=grammar)
    try:
        yield frontend, limiter
    finally:
        await grammar.close()
        limits.close()
        service.stop()


async def no_ticket_left(limiter: Limiter) -> None:
    """The service has every release it was sent (bounded wait: it answers in its own thread)."""
    for _ in range(500):
        if not limiter.tickets:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"tickets left: {limiter.tickets}")


async def status_of(request) -> int:
    try:
        await request
    except APIError as exc:
        return exc.status
    return 200


def test_constrained_requests_count_against_the_rate_before_they_compile(tokenizer, tmp_path):
    async def run():
        async with front_end(tokenizer, tmp_path) as (frontend, limiter):
            who = caller(Limits(requests_per_minute=RATE, tokens_per_minute=1000))
            statuses = [await status_of(frontend.generate(body(f"[{i}-"), who)) for i in range(RATE + 4)]
            assert statuses == [400] * RATE + [429] * 4
            assert frontend.grammar.compiles == RATE  # the refused ones were never compiled
            await no_ticket_left(limiter)  # each 400 gave its ticket back at once ...
            state = limiter.principals[who.limit_key]
            assert state.active == 0 and state.tokens.level > 1000 - 1  # ... with every token
            assert await status_of(frontend.generate_batch(body("[x-", ["a", "b"]), who)) == 429
    asyncio.run(run())


def test_a_batch_is_admitted_once_and_checked_once(tokenizer, tmp_path):
    async def run():
        async with front_end(tokenizer, tmp_path) as (frontend, limiter):
            who = caller(Limits(requests_per_minute=2))
            assert await status_of(frontend.generate_batch(body("[b-", ["a", "b", "c"]), who)) == 400
            assert frontend.grammar.compiles == 1
            await no_ticket_left(limiter)
            assert await status_of(frontend.generate_batch(body("[c-", ["a", "b"]), who)) == 400
            assert await status_of(frontend.generate_batch(body("[d-", ["a", "b"]), who)) == 429
    asyncio.run(run())


def test_a_request_cancelled_while_its_compile_waits_or_runs_gives_its_ticket_back(tokenizer, tmp_path):
    """One stopped worker: the first request's compile runs on it (and hangs), the second's waits
    for it. Both are cancelled (as a route does when its client leaves): no ticket is left, the
    caller (one request at a time) is served again, and the waiting compile never ran."""
    async def run():
        async with front_end(tokenizer, tmp_path, pool_size=1) as (frontend, limiter):
            grammar = frontend.grammar
            who = caller(Limits(max_concurrent_requests=2))
            await grammar.check(*body("a").constraint)  # starts the one worker
            (pid,) = grammar.worker_pids()
            os.kill(pid, signal.SIGSTOP)
            try:
                before = grammar.compiles
                running = asyncio.ensure_future(frontend.generate(body("[0-9]+x"), who))
                for _ in range(500):  # bounded: admitted, and on the stopped worker
                    if grammar.compiles > before:
                        break
                    await asyncio.sleep(0.01)
                waiting = asyncio.ensure_future(frontend.generate(body("[0-9]+y"), who))
                for _ in range(500):  # bounded: admitted, and waiting for the worker
                    if grammar.waiting:
                        break
                    await asyncio.sleep(0.01)
                assert grammar.compiles == before + 1 and grammar.waiting == 1
                assert await status_of(frontend.generate(body("[0-9]+z"), who)) == 429  # 2 at a time
                for task in (waiting, running):
                    task.cancel()
                await asyncio.gather(waiting, running, return_exceptions=True)
                await no_ticket_left(limiter)
                assert grammar.waiting == 0
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await status_of(frontend.generate(body("[q-"), who)) == 400  # served again
            assert grammar.compiles == before + 2  # "[0-9]+y" never reached a worker
    asyncio.run(run())
