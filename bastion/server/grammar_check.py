"""The API server's check of a request's output constraint, once the request is admitted.

`GrammarChecker.check(spec, field)` answers with a 400 naming the client's `field` when the
constraint is over the size bound (`--structured-output-max-bytes`), malformed, fails our own
checks (a `$ref` cycle with no base case), does not compile, or takes longer to compile than
`--structured-output-compile-timeout`. The compile is real (`LLMatcher.validate_grammar` against
the served model's vocabulary) and runs in worker processes (`structured/check_worker.py`): a
compile past the bound has its worker killed and replaced, and the event loop never waits on a
compile, so free requests go on meanwhile.

Workers start lazily, on the first constrained request, at most `POOL_SIZE` at a time: a server
whose clients never constrain their output pays no memory and no start-up for them (each is a
small Python process with llguidance and the vocabulary, started in well under a second), and a
deployment with many API servers does not multiply idle processes. Verdicts are kept in an LRU
keyed by the constraint's text (`--structured-output-cache-size`; its grammar is a function of
that text), time-outs included, so a repeated schema skips the round trip and a repeated
pathological one is refused at once. Identical constraints checked at once share one compile.

Compiles waiting for a worker are bounded per principal (429) and in all (503), a cached verdict
or a shared compile taking no place (`structured/compile_queue.py`). A cancelled check (its client
left) stops waiting at once; a compile every waiter left is dropped unless it is on a worker.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from typing import NamedTuple

import msgspec

from bastion.child_python import python_command, python_environment
from bastion.config.engine import StructuredOutputConfig
from bastion.server.http.errors import APIError
from bastion.structured.check_worker import (CheckRequest, CheckVerdict, FromWorker, WorkerReady,
                                             WorkerSetup, encode_frame, frame_size)
from bastion.structured.compile_queue import CompileJob, CompileQueue, CompileQueueFull
from bastion.structured.spec import StructuredOutputs

logger = logging.getLogger(__name__)

POOL_SIZE = 2
STARTUP_TIMEOUT = 60.0  # seconds a worker may take to build its vocabulary
MEMORY_HEADROOM = 2 * 2**30  # address space a worker may grow by while compiling
MAX_ERROR = 1000  # characters of the compiler's message a client gets back
CODE = "invalid_structured_output"  # the `code` of every refusal of a constraint
RETRY_AFTER = "1"  # seconds, when too many compiles wait (as the limiter's queue refusals)
# What a worker inherits from the API server's environment: enough to run Python, nothing else.
_ENV_ALLOWED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
_TIMED_OUT, _CRASHED = "\0timeout", "\0crashed"


class Constraint(NamedTuple):
    """A request's output constraint and the body field it came from (named by every 400)."""

    spec: StructuredOutputs
    field: str


class GrammarChecker:
    """Checks constraints for one API-server process; `close()` ends its workers."""

    def __init__(self, config: StructuredOutputConfig, tokenizer_json: str | None, vocab_size: int,
                 eos_token_ids: list[int], pool_size: int = POOL_SIZE) -> None:
        self.config = config
        self._setup = None if tokenizer_json is None else WorkerSetup(
            tokenizer_json, vocab_size, list(eos_token_ids), MEMORY_HEADROOM,
            config.structured_output_strict_properties)
        self.unavailable: str | None = None  # why this model's vocabulary cannot take grammars
        self.pool_size = pool_size
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._jobs: dict[str, CompileJob] = {}  # by constraint text: waiting or on a worker
        self._queue = CompileQueue(config.structured_output_max_waiting_compiles,
                                   config.structured_output_max_waiting_compiles_per_principal)
        self._running: set[asyncio.Task] = set()
        self.compiles = 0  # round trips to a worker (tests and metrics read it)

    @property
    def waiting(self) -> int:
        """Compiles waiting for a worker."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Compiles on a worker (or starting one)."""
        return len(self._running)

    async def check(self, spec: StructuredOutputs, field: str, principal: str = "") -> None:
        """Nothing when `spec` compiles within the bounds; else an APIError (400) naming `field`;
        429 or 503 when `principal`'s compile would wait past the bounds of waiting compiles."""
        limit = self.config.structured_output_max_bytes
        if spec.size > limit:
            raise APIError(400, f"'{field}' is {spec.size} bytes, over this server's bound of {limit} "
                                "bytes (--structured-output-max-bytes)", field, CODE)
        if self._setup is None:
            return  # no vocabulary to compile against (a front end built without one, in tests)
        try:
            if self.unavailable is not None:
                raise VocabularyError(self.unavailable)
            error = await self._verdict(spec, principal)
        except VocabularyError as exc:
            raise APIError(400, f"structured outputs are unavailable for this model: {exc}", field,
                           CODE) from None
        if error == _TIMED_OUT:
            raise APIError(400, f"the grammar of '{field}' took longer than "
                                f"{self.config.structured_output_compile_timeout:g} s to compile "
                                "(--structured-output-compile-timeout); simplify it", field, CODE)
        if error == _CRASHED:
            raise APIError(400, f"the grammar of '{field}' could not be checked: its compile ended "
                                "the check process (too large or too complex)", field, CODE)
        if error:
            error = error if len(error) <= MAX_ERROR else error[:MAX_ERROR] + " ..."
            raise APIError(400, f"invalid '{field}': {error}", field, CODE)

    async def _verdict(self, spec: StructuredOutputs, principal: str) -> str:
        key = spec.key
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        job = self._jobs.get(key)
        if job is None:  # NOTE: a shared compile needs no place
            job = CompileJob(key, spec, principal)
            if len(self._running) < self.pool_size:
                self._run(job)
            else:
                try:
                    self._queue.admit(job)
                except CompileQueueFull as exc:  # as the limiter's refusals: Retry-After, 429's code
                    raise APIError(exc.status, exc.message, headers={"Retry-After": RETRY_AFTER},
                                   code="rate_limit_exceeded" if exc.status == 429 else None) from None
            self._jobs[key] = job
        job.waiters += 1
        try:
            return await asyncio.shield(job.verdict)  # a waiter that leaves cancels only itself
        finally:
            job.waiters -= 1
            if job.waiters == 0 and not job.started and not job.verdict.done():
                # every waiter left before a worker took it: it is not run
                self._queue.drop(job)
                self._jobs.pop(key, None)
                job.verdict.cancel()

    def _run(self, job: CompileJob) -> None:
        """Start `job` on a worker; when it ends, the oldest waiting job starts."""
        job.started = True
        task = asyncio.ensure_future(self._settle(job))
        self._running.add(task)

        def ended(_: asyncio.Task) -> None:
            self._running.discard(task)
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]
            while self._queue and len(self._running) < self.pool_size:
                self._run(self._queue.pop())
        task.add_done_callback(ended)

    async def _settle(self, job: CompileJob) -> None:
        try:
            if self.unavailable is not None:
                raise VocabularyError(self.unavailable)
            error = await self._compile(job.key, job.spec)
        except asyncio.CancelledError:
            job.verdict.cancel()  # the checker is closing
            raise
        except Exception as exc:  # handed to every waiter
            job.verdict.set_exception(exc)
        else:
            job.verdict.set_result(error)

    async def _compile(self, key: str, spec: StructuredOutputs) -> str:
        worker = self._idle.pop() if self._idle else await self._start()
        self.compiles += 1
        try:
            error = await asyncio.wait_for(worker.check(spec),
                                           self.config.structured_output_compile_timeout)
        except asyncio.TimeoutError:
            logger.warning("a grammar check ran past --structured-output-compile-timeout; "
                           "its worker is killed")
            await self._discard(worker)
            error = _TIMED_OUT
        except (OSError, EOFError, ValueError, msgspec.DecodeError) as exc:
            logger.warning("a grammar check worker failed: %s", exc)
            await self._discard(worker)
            error = _CRASHED
        except BaseException:
            await self._discard(worker)  # its pipe is mid-frame: unusable
            raise
        else:
            self._idle.append(worker)
        if self.config.structured_output_cache_size > 0:
            self._cache[key] = error
            while len(self._cache) > self.config.structured_output_cache_size:
                self._cache.popitem(last=False)
        return error

    async def _start(self) -> "_Worker":
        try:
            worker = await asyncio.wait_for(_Worker.start(self._setup, self._all), STARTUP_TIMEOUT)
        except VocabularyError as exc:  # the same vocabulary every time: do not start another
            logger.error("structured outputs are unavailable for this model: %s", exc)
            self.unavailable = str(exc)
            raise
        except (asyncio.TimeoutError, OSError, EOFError, ValueError, msgspec.DecodeError) as exc:
            logger.error("the grammar check worker did not start: %s", exc)
            raise APIError(503, "the grammar checker is unavailable; try again") from None
        return worker

    async def _discard(self, worker: "_Worker") -> None:
        self._all.discard(worker)
        await worker.kill()

    async def close(self) -> None:
        """End every worker (the API server is stopping)."""
        while self._queue:
            self._queue.pop().verdict.cancel()
        self._jobs.clear()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        for worker in list(self._all):
            await self._discard(worker)
        self._idle.clear()

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._all]


class VocabularyError(Exception):
    """A worker could not build llguidance's tokenizer from this model's vocabulary."""


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._decoder = msgspec.msgpack.Decoder(FromWorker)

    @classmethod
    async def start(cls, setup: WorkerSetup, registry: set) -> "_Worker":
        proc = await asyncio.create_subprocess_exec(
            *python_command("bastion.structured.check_worker"), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=worker_environment(), close_fds=True)
        worker = cls(proc)
        registry.add(worker)  # NOTE: before the handshake, so close() ends a worker still starting
        try:
            ready = await worker.round_trip(setup)
        except BaseException:
            registry.discard(worker)
            await worker.kill()
            raise
        if not isinstance(ready, WorkerReady) or ready.error:
            registry.discard(worker)
            await worker.kill()
            if isinstance(ready, WorkerReady):
                raise VocabularyError(ready.error)
            raise ValueError("unexpected handshake")
        return worker

    async def round_trip(self, message: msgspec.Struct) -> msgspec.Struct:
        self.proc.stdin.write(encode_frame(message))
        await self.proc.stdin.drain()
        try:
            head = await self.proc.stdout.readexactly(4)
            return self._decoder.decode(await self.proc.stdout.readexactly(frame_size(head)))
        except asyncio.IncompleteReadError:
            raise EOFError("the grammar check worker exited") from None

    async def check(self, spec: StructuredOutputs) -> str:
        answer = await self.round_trip(CheckRequest(spec))
        if not isinstance(answer, CheckVerdict):
            raise ValueError(f"unexpected answer {type(answer).__name__}")
        return answer.error

    async def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        await self.proc.wait()


def worker_environment() -> dict[str, str]:
    """The worker's environment: a short allowlist (no key, token or secret of any name), with
    bastion's own package first on the path (child_python.py), and no network, no hub, one thread."""
    env = python_environment({name: os.environ[name] for name in _ENV_ALLOWED if name in os.environ})
    env.update(RAYON_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1")
    return env
