"""The engine core: requests in, per-step token deltas out. Knows token ids, never text."""
from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Callable

from bastion.config.engine import EngineConfig
from bastion.engine.disagg.handle import KvSource
from bastion.engine.disagg.transfer import KvTransfer
from bastion.engine.kv_cache import BlockManager
from bastion.engine.outputs import FinishReason, TokenDelta, TokenLogprob
from bastion.engine.prompt_logprobs import taken
from bastion.engine.request import (Request, RequestGroup, RequestStatus, advance_grammar, start_grammar,
                                    validate_request)
from bastion.engine.runner import EngineLimits, ModelRunner
from bastion.engine.tensor_parallel.shared_kv import rank_caches
from bastion.engine.tensor_parallel.workers import TensorWorkers
from bastion.model.parallel.group import TensorGroup
from bastion.model.parallel.plan import TensorParallel
from bastion.engine.sampler import Sampler
from bastion.engine.scheduler import Scheduler
from bastion.model.tokenizer import import_transformers, load_tokenizer
from bastion.sampling_params import SamplingParams
from bastion.structured.compiler import GrammarCompiler
from bastion.structured.tokenizer import grammar_tokenizer

logger = logging.getLogger(__name__)


class EngineCore:
    """Owns the runner, the block manager and the scheduler of one data-parallel rank.

    It is the one place that knows which requests are live and when each ends: `_groups` holds
    the unfinished ones; a group whose last sequence finishes moves to `_ended`.
    NOTE: `_ended` is emptied only at the start of `step()`, so `client_of` still answers for the
    deltas that ended a request (those of the last step and of any abort since).

    Structured outputs: a request with `params.structured_outputs` waits in `_compiling` (not in
    the scheduler) while `grammars` compiles its grammar off the step loop; the next `step()`
    gives each sequence its own matcher (`Request.matcher`) and schedules it, or, when the compile
    failed, ends the request and queues `(request_id, message, status)` for `take_errors()`.
    Disaggregated serving (engine/disagg/transfer.py, `enable_kv_transfer`): a `kv_hold` request
    is handed over after its first token; a `kv_source` request pulls its prompt's KV first.
    `on_grammar_done` (if set) is called from a compiler thread whenever a compile finishes, so a
    loop blocked on its inbox can wake up.
    """

    def __init__(self, config: EngineConfig, tp: TensorParallel | None = None,
                 group: TensorGroup | None = None, private_dir: str | None = None,
                 own_process: bool = False) -> None:
        """With `config.tensor_parallel_size` N > 1 (and no `tp` given) this engine is worker 0
        of a rank of N: it starts the other N-1 (engine/tensor_parallel/workers.py; their rendezvous
        file goes in `private_dir`, a 0700 folder, or a private temporary one). `own_process`:
        this process exists only to run the engine (pin it to worker 0's cores). `tp` and
        `group` are for tests that run every worker themselves."""
        self.config = config
        self.workers: TensorWorkers | None = None
        self.kv: KvTransfer | None = None  # disaggregated serving: enable_kv_transfer
        sink = None
        if tp is None and config.tensor_parallel_size > 1:
            self.workers = TensorWorkers(config, private_dir, pin_self=own_process)
            tp, group, sink = self.workers.tp, self.workers.group, self.workers.send_step
        try:
            self.runner = ModelRunner(config, tp or TensorParallel(), group, sink)
        except BaseException:
            self.close()
            raise
        self.limits: EngineLimits = self.runner.limits
        self.blocks = BlockManager(self.limits.num_kv_blocks, self.limits.block_size,
                                   config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.blocks)
        self.sampler = Sampler(config.model.seed)
        self.eos_token_ids = frozenset(self.runner.arch.eos_token_ids)
        self._groups: dict[str, RequestGroup] = {}
        self._ended: dict[str, RequestGroup] = {}
        sc = config.structured
        import_transformers()  # NOTE: before the compiler's thread loads the tokenizer with it
        self.grammars = GrammarCompiler(self._grammar_tokenizer,
                                        timeout=sc.structured_output_compile_timeout,
                                        max_bytes=sc.structured_output_max_bytes,
                                        cache_size=sc.structured_output_cache_size,
                                        strict_properties=sc.structured_output_strict_properties)
        self._compiling: dict[str, Future] = {}
        self._failed: list[tuple[str, str, int]] = []
        self.on_grammar_done: Callable[[], None] | None = None

    def enable_kv_transfer(self, rank: int, keys, peers: list[bytes], host: str,
                           wake: Callable[[], None]) -> None:
        """Take this rank's `--kv-role` (prefill: a KV listener on `host`; decode: a puller),
        with its CURVE `keys` and the engine `peers` it admits; `wake` is called from their
        threads when the engine thread has something to do."""
        if self.config.kv_transfer.role != "both":
            caches = rank_caches(self.runner, self.workers)
            self.kv = KvTransfer(self.config.kv_transfer, rank, self.blocks, self.scheduler, lambda: caches,
                                 keys, peers, host, wake)

    def _grammar_tokenizer(self):
        """llguidance's view of the checkpoint's tokenizer: the logits' width, the model's EOS ids."""
        return grammar_tokenizer(load_tokenizer(self.config.model.model), self.limits.vocab_size,
                                 list(self.runner.arch.eos_token_ids))

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError for a request the engine could never serve."""
        limits = self.limits
        validate_request(prompt_token_ids, params, limits.vocab_size, limits.max_model_len, limits.pool_tokens)

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    cache_salt: str | None = None, client: int = 0, kv_hold: bool = False,
                    kv_source: KvSource | None = None) -> None:
        """Queue a request (n sequences when params.n > 1); raise ValueError if it is invalid.

        `client` is an opaque tag for the caller's routing, read back with `client_of`.
        `kv_hold`: hand the request over after its first token (a prefill rank); `kv_source`:
        pull its prompt's KV and continue after the tokens already sampled (a decode rank).
        """
        if request_id in self._groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.validate(prompt_token_ids, params)
        if (kv_hold or kv_source is not None) and (params.n != 1 or params.structured_outputs is not None):
            raise ValueError("a disaggregated request has one sequence and no structured outputs")
        if kv_source is not None:
            validate_request(prompt_token_ids + kv_source.output_token_ids, params, self.limits.vocab_size,
                             self.limits.max_model_len, self.limits.pool_tokens)
        max_total = min(self.limits.max_model_len, self.limits.pool_tokens)
        group = RequestGroup.make(request_id, prompt_token_ids, params, self.eos_token_ids, max_total, cache_salt,
                                  client, ordered=self.blocks.enable_prefix_caching,
                                  kv_hold=kv_hold and self.kv is not None, kv_source=kv_source)
        # NOTE: scheduled only once every sequence is made: a sequence that fails to be made must
        # not leave its siblings running for a group nobody knows.
        self._groups[request_id] = group
        if kv_source is not None and self.kv is not None:
            return self.kv.start_pull(group.sequences[0], kv_source)
        if params.structured_outputs is None:
            for req in group.sequences:
                self.scheduler.add(req)
            return
        future = self.grammars.submit(params.structured_outputs)
        self._compiling[request_id] = future
        future.add_done_callback(self._grammar_done)

    def _grammar_done(self, _future: Future) -> None:
        if self.on_grammar_done is not None:
            self.on_grammar_done()

    def _admit_compiled(self) -> None:
        """Schedule the requests whose grammar is ready; end those whose compile failed."""
        for request_id, future in list(self._compiling.items()):
            if not future.done():
                continue
            del self._compiling[request_id]
            group = self._groups[request_id]
            live = [r for r in group.sequences if not r.is_finished]
            if future.exception() is not None:
                for req in live:
                    req.status, req.finish_reason = RequestStatus.FINISHED, FinishReason.ABORT
                self._failed.append((request_id, f"structured outputs: {future.exception()}", 400))
                self._end_if_finished(request_id, group)
                continue
            for req in live:
                start_grammar(req, future.result().deep_copy())
                self.scheduler.add(req)

    def take_errors(self) -> list[tuple[str, str, int]]:
        """`(request_id, message, HTTP status)` of each request the last steps ended with an
        error (a grammar that failed to compile: 400; a KV pull that failed under the `fail`
        policy: 503); the request is over, `client_of` answers until the next step."""
        failed, self._failed = self._failed, []
        return failed

    def wait_for_grammars(self, timeout: float | None = None) -> None:
        """Block until a compile finishes, when compiles are all the engine waits on."""
        if self._compiling and not self.has_work:
            wait(list(self._compiling.values()), timeout, FIRST_COMPLETED)

    def owns(self, request_id: str) -> bool:
        """True for a live request, or one that ended since the last step."""
        return request_id in self._groups or request_id in self._ended

    def client_of(self, request_id: str) -> int:
        """The `client` tag of a live request, or of one that ended since the last step."""
        group = self._groups.get(request_id) or self._ended[request_id]
        return group.client

    def abort_request(self, request_id: str, index: int | None = None) -> list[TokenDelta]:
        """End every sequence of a request (or only sequence `index`) now; blocks return at once
        (a request this rank has just handed over: its lease is released, no pull will come)."""
        group = self._groups.get(request_id)
        if group is None:
            if self.kv is not None:
                self.kv.release(request_id)
            return []
        outputs = []
        compiling = request_id in self._compiling
        for req in group.sequences:
            if not req.is_finished and (index is None or req.index == index):
                if self.kv is not None and self.kv.abort(req):
                    pass  # its pull is under way: blocks are freed when it ends
                elif compiling:  # not in the scheduler yet
                    req.status, req.finish_reason = RequestStatus.FINISHED, FinishReason.ABORT
                else:
                    self.scheduler.finish(req, FinishReason.ABORT)
                req.drop_grammar()
                outputs.append(TokenDelta(request_id, req.index, [], [], FinishReason.ABORT))
        if group.finished:
            self._compiling.pop(request_id, None)
        self._end_if_finished(request_id, group)
        return outputs

    @property
    def has_unfinished(self) -> bool:
        """True while any request is live, waiting compiles included."""
        return self.scheduler.has_unfinished or bool(self._compiling) or (self.kv is not None and self.kv.pending)

    @property
    def num_compiling(self) -> int:
        """Sequences waiting for their grammar (not yet in the scheduler)."""
        return sum(not r.is_finished for rid in self._compiling for r in self._groups[rid].sequences)

    def close(self) -> None:
        """Stop the tensor-parallel workers this engine started (if any)."""
        if self.kv is not None:
            self.kv.close()
            self.kv = None
        if self.workers is not None:
            self.workers.stop()
            self.workers = None

    @property
    def has_work(self) -> bool:
        """True when `step()` has something to do (not merely compiles still running)."""
        return (self.scheduler.has_unfinished or any(f.done() for f in self._compiling.values())
                or (self.kv is not None and self.kv.ready))

    def step(self) -> list[TokenDelta]:
        """Schedule, run the model, sample, and report what changed."""
        self._ended.clear()
        self._admit_compiled()
        if self.kv is not None:
            for request_id, message, status in self.kv.poll():
                group = self._groups.get(request_id)
                if group is not None:  # NOTE: else the client aborted it first: nothing to report
                    self._failed.append((request_id, message, status))
                    self._end_if_finished(request_id, group)
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        try:
            if self.runner.device.type == "cuda":  # NOTE: on CPU the fill would contend with the forward
                self.sampler.prepare([s.request for s in out.scheduled if s.samples], self.limits.vocab_size)
            sampling, logits = self.runner.execute(out)
            reqs = [s.request for s in sampling]
            tokens, logprobs = self.sampler(logits, reqs) if reqs else ([], [])
        except Exception:
            logger.error("engine step failed; scheduler state:\n%s", self.scheduler.dump_state())
            raise
        self.scheduler.finish_step(out)
        return [self._append(req, tok, lp) for req, tok, lp in zip(reqs, tokens, logprobs)] + self._end_scored(out)

    def _end_scored(self, out) -> list[TokenDelta]:
        """End each request whose prompt, only to be scored (max_tokens 0), is now computed."""
        ended = [s.request for s in out.scheduled if s.completes and not s.samples and not s.request.is_finished]
        for req in ended:
            self.scheduler.finish(req, FinishReason.LENGTH)
            req.drop_grammar()
            self._end_if_finished(req.request_id, self._groups[req.request_id])
        return [TokenDelta(req.request_id, req.index, [], [], FinishReason.LENGTH, req.num_cached_tokens,
                           prompt_logprobs=taken(req.prompt_logprobs)) for req in ended]

    def _append(self, req: Request, token: int, logprob: TokenLogprob | None) -> TokenDelta:
        prompt_logprobs = taken(req.prompt_logprobs)
        reason = req.append_token(token)
        if logprob is not None:
            req.logprobs.append(logprob)
        if req.has_grammar:
            reason = advance_grammar(req, token, reason)
        if reason is None and req.kv_hold:  # prefilled: a decode rank takes it from here
            handle = self.kv.hand_over(req)
            self._end_if_finished(req.request_id, self._groups[req.request_id])
            return TokenDelta(req.request_id, req.index, [token], [logprob] if logprob is not None else [],
                              None, req.num_cached_tokens, handle, prompt_logprobs)
        if reason is not None:
            self.scheduler.finish(req, reason)
            req.drop_grammar()
            self._end_if_finished(req.request_id, self._groups[req.request_id])
        return TokenDelta(req.request_id, req.index, [token], [logprob] if logprob is not None else [],
                          reason, req.num_cached_tokens, prompt_logprobs=prompt_logprobs)

    def _end_if_finished(self, request_id: str, group: RequestGroup) -> None:
        if group.finished:
            self._ended[request_id] = self._groups.pop(request_id)

