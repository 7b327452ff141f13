"""A request inside the engine: token ids, counters and the blocks that hold its KV; the group of
a request's n sequences; the checks of a request (admissible at all) and of each sampled token
(against its grammar)."""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from bastion.engine.outputs import FinishReason, TokenLogprob
from bastion.engine.prompt_logprobs import PromptLogprobs
from bastion.sampling_params import SamplingParams
from bastion.structured.gate import GrammarGate

if TYPE_CHECKING:
    from bastion.engine.disagg.handle import KvSource

logger = logging.getLogger(__name__)


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Request:
    """Token ids plus counters; the scheduler tops `num_computed_tokens` up to `num_tokens`.

    NOTE: `num_computed_tokens <= num_tokens` always; a token is sampled only in a step that
    brings `num_computed_tokens` up to `num_tokens`, so prefill, chunked prefill, prefix hits and
    decode are one piece of arithmetic.
    """

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 eos_token_ids: frozenset[int], max_total_tokens: int,
                 cache_salt: str | None = None, index: int = 0) -> None:
        self.request_id = request_id
        self.index = index  # which of the request's n sequences this is
        self.params = params
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache (first admission)
        self.block_ids: list[int] = []
        self.block_hashes: list[bytes] = []
        self.num_registered_blocks = 0
        self.status = RequestStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.cache_salt = cache_salt
        self.num_preemptions = 0
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        # the prompt's own logprobs: computed by the first sequence only (its siblings share them)
        self.prompt_logprobs: PromptLogprobs | None = None
        if params.prompt_logprobs is not None and index == 0:
            self.prompt_logprobs = PromptLogprobs(len(prompt_token_ids), params.prompt_logprobs)
        self.stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else eos_token_ids)
        self.max_total_tokens = max_total_tokens
        self.wait_for: Request | None = None  # an n>1 sibling whose prompt KV we will share
        self.kv_hold = False  # a prefill rank's request: handed over after its first token
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None
        # this sequence's own llguidance matcher (a deep copy of the compiled grammar), advanced
        # by every accepted token; None without structured outputs and once the sequence ends
        self.matcher = None
        # the matcher held back while the output is free (structured/gate.py); None once it starts
        self.grammar_gate: GrammarGate | None = None

    def logit_bias(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`params.logit_bias` as (token ids, biases) tensors on `device`, made once."""
        if self._bias is None or self._bias[0].device != device:
            bias = self.params.logit_bias or {}
            self._bias = (torch.tensor(list(bias), dtype=torch.long, device=device),
                          torch.tensor(list(bias.values()), dtype=torch.float32, device=device))
        return self._bias

    @property
    def has_grammar(self) -> bool:
        """True while the sequence has a grammar, started or waiting for its trigger."""
        return self.matcher is not None or self.grammar_gate is not None

    def drop_grammar(self) -> None:
        self.matcher = self.grammar_gate = None

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def scores_prompt(self) -> bool:
        """True while prompt tokens remain to be scored (no prefix-cache hits meanwhile)."""
        return self.prompt_logprobs is not None and not self.prompt_logprobs.complete

    @property
    def prefill_done(self) -> bool:
        return self.num_computed_tokens >= self.num_prompt_tokens

    def append_token(self, token_id: int) -> FinishReason | None:
        """Add a sampled token; return why the request stops, if it does."""
        self.all_token_ids.append(token_id)
        produced = self.num_output_tokens
        if produced >= self.params.min_tokens and token_id in self.stop_ids:
            return FinishReason.STOP
        if self.params.max_tokens is not None and produced >= self.params.max_tokens:
            return FinishReason.LENGTH
        if self.num_tokens >= self.max_total_tokens:
            return FinishReason.LENGTH
        return None

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={self.block_ids}, "
                f"status={self.status.value})")


@dataclass
class RequestGroup:
    """The n sequences of one request and the opaque tag of the client that sent it."""

    sequences: list[Request]
    client: int

    @property
    def finished(self) -> bool:
        return all(r.is_finished for r in self.sequences)

    @classmethod
    def make(cls, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
             eos_token_ids: frozenset[int], max_total: int, cache_salt: str | None, client: int,
             ordered: bool, kv_hold: bool, kv_source: "KvSource | None") -> "RequestGroup":
        """The request's n sequences (sequence i seeded `seed + i`). `ordered`: the siblings
        wait for the first (a shared prompt's cached blocks; with prompt logprobs, their deltas
        after the first's). `kv_hold`/`kv_source`: a prefill rank's hand-over, a decode rank's
        pull (its sampled tokens appended, its prompt already scored)."""
        group = cls([], client)
        for i in range(params.n):
            child_params = params if params.n == 1 or params.seed is None else replace(
                params, seed=_wrap_int64(params.seed + i))
            req = Request(request_id, prompt_token_ids, child_params, eos_token_ids, max_total, cache_salt, index=i)
            if i and (ordered or params.prompt_logprobs is not None):
                req.wait_for = group.sequences[0]
            req.kv_hold = kv_hold
            if kv_source is not None:
                req.prompt_logprobs = None
            for token in kv_source.output_token_ids if kv_source is not None else ():
                req.append_token(token)
            group.sequences.append(req)
        return group


def _wrap_int64(value: int) -> int:
    """`value` wrapped into a signed 64-bit integer (the seeds of a request's n sequences)."""
    return (value + 2**63) % 2**64 - 2**63


def validate_request(prompt_token_ids: list[int], params: SamplingParams, vocab_size: int,
                     max_model_len: int, pool_tokens: int) -> None:
    """Raise ValueError for a request an engine of these sizes could never serve."""
    n = len(prompt_token_ids)
    if n == 0:
        raise ValueError("prompt is empty: give at least one token")
    if any(not isinstance(t, int) or t < 0 or t >= vocab_size for t in prompt_token_ids):
        raise ValueError(f"prompt token ids must be integers in [0, {vocab_size})")
    params.check_vocabulary(vocab_size)
    if params.prompt_logprobs is not None and params.prompt_logprobs > vocab_size:
        raise ValueError(f"prompt_logprobs {params.prompt_logprobs} exceeds the vocabulary ({vocab_size})")
    if n >= max_model_len:
        raise ValueError(f"prompt has {n} tokens but the model's context is {max_model_len} "
                         "tokens (room is needed for at least one new token)")
    if n + 1 > pool_tokens:
        raise ValueError(f"prompt has {n} tokens but the whole KV pool holds {pool_tokens}")


def start_grammar(req: Request, matcher) -> None:
    """Give a sequence its compiled matcher: constraining now, or held back until the output
    ends with `params.grammar_starts_after` (structured/gate.py)."""
    trigger = req.params.grammar_starts_after
    if trigger:
        req.grammar_gate = GrammarGate(trigger, matcher)
    else:
        req.matcher = matcher


def advance_grammar(req: Request, token: int, reason: FinishReason | None) -> FinishReason | None:
    """Feed the accepted token to the sequence's matcher; the grammar's end stops the sequence.
    In the free stage the token only moves the gate (the grammar starts after the trigger).

    A token the matcher refuses (it should never pass the mask) ends the sequence (abort) with a
    warning instead of failing the step: one broken grammar never takes the engine down.
    NOTE: preemption recomputes KV but keeps the output tokens, so the matcher stays in step.
    """
    if req.matcher is None:
        if req.grammar_gate.passes(token):
            req.matcher, req.grammar_gate = req.grammar_gate.matcher, None
        return reason
    if not req.matcher.consume_token(token):
        logger.warning("request %s seq %d: token %d broke its grammar (%s); the sequence ends",
                       req.request_id, req.index, token, req.matcher.get_error())
        return reason or FinishReason.ABORT
    if reason is None and req.matcher.is_stopped():
        return FinishReason.STOP
    return reason
