"""Compiles waiting for the grammar check workers: bounded per principal (429) and in all (503),
with no place taken by a cached verdict or a compile shared with one under way; a compile whose
every waiter has left before it reached a worker is dropped, one on a worker finishes and is
cached. The workers are real; they are held busy by stopping them (SIGSTOP) and let go after."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest

from bastion.config.engine import StructuredOutputConfig
from bastion.model.demo import DEMO_MODEL_DIR
from bastion.model.tokenizer import load_tokenizer
from bastion.server.grammar_check import GrammarChecker
from bastion.server.http.errors import APIError
from bastion.structured.spec import StructuredOutputs
from bastion.structured.tokenizer import tokenizer_json


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEMO_MODEL_DIR)


def regex(i: int) -> StructuredOutputs:
    return StructuredOutputs(regex=f"[0-9]{{{i}}}")


async def settle(until, steps: int = 500) -> None:
    """Let the event loop run until `until()` holds (bounded: a few seconds at most)."""
    for _ in range(steps):
        if until():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


@contextlib.asynccontextmanager
async def stopped_workers(check: GrammarChecker, count: int):
    """`count` real workers started (one warm-up check each, at once), then stopped: every
    compile sent to them waits until the block ends, when they are let go."""
    await asyncio.gather(*(check.check(regex(100 + i), "f") for i in range(count)))
    pids = check.worker_pids()
    assert len(pids) == count
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def refused(task: asyncio.Task) -> APIError:
    assert task.done() and isinstance(task.exception(), APIError), task
    return task.exception()


def test_waiting_compiles_are_bounded_per_principal_and_in_all(tokenizer):
    async def run():
        check = GrammarChecker(StructuredOutputConfig(
            structured_output_compile_timeout=60, structured_output_max_waiting_compiles=3,
            structured_output_max_waiting_compiles_per_principal=2),
            tokenizer_json(tokenizer), len(tokenizer), [tokenizer.eos_token_id])
        tasks: dict[str, asyncio.Task] = {}

        def send(name: str, spec: StructuredOutputs, principal: str) -> None:
            tasks[name] = asyncio.ensure_future(check.check(spec, "f", principal=principal))

        try:
            async with stopped_workers(check, 2):
                before = check.compiles
                send("a1", regex(1), "a")
                send("a2", regex(2), "a")  # both on a (stopped) worker: no place taken
                send("a3", regex(3), "a")
                send("a4", regex(4), "a")  # a's two places
                send("a5", regex(5), "a")
                send("b1", regex(6), "b")  # the third place in all
                send("c1", regex(7), "c")
                send("c2", regex(3), "c")  # the same constraint as a3: shares its compile
                send("c3", regex(100), "c")  # a cached verdict: answered at once
                await settle(lambda: tasks["c3"].done() and tasks["a5"].done() and tasks["c1"].done())
                assert tasks["c3"].result() is None
                per_principal, overall = refused(tasks["a5"]), refused(tasks["c1"])
                assert per_principal.status == 429 and per_principal.code == "rate_limit_exceeded"
                assert "--structured-output-max-waiting-compiles-per-principal 2" in per_principal.message
                assert overall.status == 503
                assert "--structured-output-max-waiting-compiles 3" in overall.message
                for error in (per_principal, overall):
                    assert error.headers["Retry-After"] == "1" and error.body()["error"]["type"] in (
                        "rate_limit_error", "service_unavailable")
                assert check.waiting == 3 and not any(tasks[n].done() for n in ("a1", "a3", "c2", "b1"))
            waited = [n for n in tasks if n not in ("a5", "c1", "c3")]
            await asyncio.wait_for(asyncio.gather(*(tasks[n] for n in waited)), 60)
            assert check.compiles - before == 5  # a1 a2 a3 a4 b1; c2 shared a3's
            assert check.waiting == 0
            await check.check(regex(8), "f", principal="a")  # places are free again
        finally:
            await check.close()
    asyncio.run(run())


def test_a_compile_whose_waiters_all_left_before_it_reached_a_worker_is_not_run(tokenizer):
    async def run():
        check = GrammarChecker(StructuredOutputConfig(structured_output_compile_timeout=60),
                               tokenizer_json(tokenizer), len(tokenizer), [tokenizer.eos_token_id],
                               pool_size=1)
        try:
            async with stopped_workers(check, 1):
                before = check.compiles
                running = asyncio.ensure_future(check.check(regex(1), "f"))
                await settle(lambda: check.compiles == before + 1)  # on the stopped worker
                waiting = [asyncio.ensure_future(check.check(regex(2), "f")) for _ in range(2)]
                await asyncio.sleep(0.05)
                for task in waiting:  # both of its clients leave
                    task.cancel()
                running.cancel()  # this one's compile is on a worker: it goes on
                await asyncio.gather(*waiting, running, return_exceptions=True)
            await settle(lambda: check.running == 0)  # the compile on the worker has finished
            assert check.compiles == before + 1 and check.waiting == 0  # the left one's never ran
            await check.check(regex(1), "f")
            assert check.compiles == before + 1  # the verdict of the one on a worker is cached
            await check.check(regex(2), "f")
            assert check.compiles == before + 2  # nothing was cached for the dropped one
        finally:
            await check.close()
    asyncio.run(run())
