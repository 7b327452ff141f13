"""GrammarCompiler: compiles constraints into pristine llguidance matchers off the step loop.

Two worker threads turn a `StructuredOutputs` into its grammar text and compile that into an
`LLMatcher` (llguidance drops the GIL while it compiles, so the engine keeps stepping). Results,
errors included, are kept in an LRU cache keyed by the constraint as written (its kind and value);
an identical constraint still compiling is shared, not compiled twice.
NOTE: the key is not `grammar_text()`, because making that text is itself work for the worker:
converting a GBNF grammar runs a Python parser (a 236 KB GBNF took 89 s), which must neither run
on the step loop nor escape the time bound. The caller gets a `concurrent.futures.Future` whose result is the *pristine*
matcher (never advance it: `deep_copy()` one per sequence) and whose exception is a GrammarError
with the reason (a bad grammar, the size bound, the time bound).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from typing import Callable

from llguidance import LLMatcher, LLParserLimits, LLTokenizer

from bastion.structured.schema_checks import check_spec
from bastion.structured.spec import GrammarError, StructuredOutputs

logger = logging.getLogger(__name__)

NUM_WORKERS = 2


class GrammarCompiler:
    """A small compile pool with a cache, a size bound and a time bound.

    `make_tokenizer` builds llguidance's tokenizer; it runs once, in the pool, as soon as the
    compiler is made, so the first request does not pay for it.

    The time bound: a compile still running `timeout` seconds after it was submitted fails the
    request. NOTE: the compiling thread cannot be killed (llguidance offers no cancellation), so it
    runs on and its result still lands in the cache; a pathological grammar may hold a worker for
    a long time. That is why the API server checks every constraint first in a process it can
    kill; this bound is the engine's defence in depth, as is the size bound.
    """

    def __init__(self, make_tokenizer: Callable[[], LLTokenizer], *, timeout: float,
                 max_bytes: int, cache_size: int, strict_properties: bool = True) -> None:
        self.timeout, self.max_bytes, self.cache_size = timeout, max_bytes, cache_size
        self.strict_properties = strict_properties  # StructuredOutputs.grammar_text's
        self.limits = LLParserLimits(verbose_errors=False)
        self.hits = self.misses = 0
        self._cache: OrderedDict[str, Future] = OrderedDict()
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._tokenizer: Future = Future()
        self._jobs.put((self._tokenizer, make_tokenizer))
        # NOTE: daemon threads of our own, not a ThreadPoolExecutor: its workers are joined at
        # interpreter exit, and a compile that never ends would keep the process alive.
        for i in range(NUM_WORKERS):
            threading.Thread(target=self._work, name=f"grammar-compiler-{i}", daemon=True).start()

    def tokenizer(self, timeout: float | None = None) -> LLTokenizer:
        """llguidance's tokenizer (waits for it to be built; raises what building it raised)."""
        return self._tokenizer.result(timeout)

    def submit(self, spec: StructuredOutputs) -> Future:
        """A future of the pristine matcher for `spec` (done at once on a cache hit or a refusal)."""
        outer: Future = Future()
        if spec.size > self.max_bytes:
            outer.set_exception(GrammarError(
                f"the constraint is {spec.size} bytes, over the limit of {self.max_bytes} "
                "(--structured-output-max-bytes)"))
            return outer
        key = spec.key
        with self._lock:
            inner = self._cache.get(key)
            if inner is not None:
                self.hits += 1
                self._cache.move_to_end(key)
            else:
                self.misses += 1
                inner = Future()
                self._cache[key] = inner
                self._jobs.put((inner, lambda: self._compile(spec)))
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if inner.done():
            _copy(inner, outer)
            return outer
        timer = threading.Timer(self.timeout, _expire, (outer, self.timeout))
        timer.daemon = True
        inner.add_done_callback(lambda f: (timer.cancel(), _copy(f, outer)))
        timer.start()
        return outer

    def _compile(self, spec: StructuredOutputs) -> LLMatcher:
        text = spec.grammar_text(self.strict_properties)
        check_spec(spec)
        try:
            tokenizer = self.tokenizer()
        except Exception as exc:
            raise GrammarError(f"unavailable for this model: {exc}") from None
        matcher = LLMatcher(tokenizer, text, log_level=0, limits=self.limits)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return matcher

    def _work(self) -> None:
        while True:
            future, job = self._jobs.get()
            try:
                future.set_result(job())
            except Exception as exc:  # GrammarError, or the tokenizer's own load error
                future.set_exception(exc)


def _copy(source: Future, target: Future) -> None:
    try:
        if source.exception() is not None:
            target.set_exception(source.exception())
        else:
            target.set_result(source.result())
    except InvalidStateError:
        pass  # the time bound came first


def _expire(target: Future, timeout: float) -> None:
    try:
        target.set_exception(GrammarError(
            f"the grammar did not compile within {timeout:g} s (--structured-output-compile-timeout)"))
    except InvalidStateError:
        pass
