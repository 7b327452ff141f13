"""Admission for one API-server process: the one call every route makes.

A route hands the front end its parsed body and the `Caller`; the front end checks the model
(served, and allowed to this caller), turns the body's prompt into token ids, fits the
completion into the context, admits the request (engines up, queue bound, the caller's limits),
then checks its output constraint (`grammar_check.py`: size, our own checks, a real compile in a
worker process under a time bound) and starts its generation. Admitting first makes every
constrained request count against its caller before a compile starts; a refused constraint, or
a client that leaves while it compiles, gives the admission back at once (the request still
counts against the caller's request rate). The request's spend is settled in one place,
`Admission.settle`, when the generation ends.
"""
from __future__ import annotations

from typing import Callable

from bastion.config.server import ServedNames, ServerConfig
from bastion.sampling_params import SamplingParams
from bastion.security.audit import RequestRecord
from bastion.security.shared_limits import LimitExceeded, LimitsClient
from bastion.server import metrics
from bastion.server.caller import Caller
from bastion.server.engine_client import EngineClient
from bastion.server.generation import Generation, GenerationBatch
from bastion.server.grammar_check import GrammarChecker
from bastion.server.http.errors import APIError
from bastion.server.scoring.fields import check_scoring
from bastion.server.prompt import (BatchBody, Budget, ChatPrompt, GenerationBody, Prompt, PromptBody, TextPrompt,
                                   check_text)
from bastion.server.reasoning.choose import Reasoning
from bastion.server.tools.choose import AutoParsing


class Frontend:
    """Shared by the routes of one API-server process: config, tokenizer, engine client, limits."""

    def __init__(self, config: ServerConfig, client: EngineClient, tokenizer, max_model_len: int,
                 vocab_size: int, limits: LimitsClient | None = None,
                 grammar: GrammarChecker | None = None) -> None:
        self.config, self.client, self.tokenizer = config, client, tokenizer
        self.limits = limits
        # NOTE: without a checker given, only the size bound is checked (no vocabulary to compile against).
        self.grammar = grammar or GrammarChecker(config.structured, None, vocab_size, [])
        if limits is not None:
            limits.on_queue_length = metrics.record_queue_length
        self.backend = tokenizer.backend_tokenizer
        self.max_model_len, self.vocab_size = max_model_len, vocab_size
        self.model_name = config.served_model_names[0]
        self.served = ServedNames(config.served_model_names, config.model_aliases)
        # how tool_choice "auto" answers are read: --tool-call-parser's parser, else the template's
        self.tool_parsing = AutoParsing.of(config.tool_call_parser, tokenizer)
        # how thinking is read: --reasoning-parser's format, else the template's (None: it is not)
        self.reasoning = Reasoning.of(config.reasoning_parser, tokenizer)

    async def generate(self, body: GenerationBody, caller: Caller) -> Generation:
        """Check, tokenize, fit and admit one generation request, check its output constraint,
        then submit it to a rank."""
        self.check_model(body.model, caller)
        body.check()
        prompt_ids, params = self.prepare(body, body.to_prompt())
        return await self.start(body, prompt_ids, params, caller)

    async def generate_batch(self, body: BatchBody, caller: Caller) -> Generation | GenerationBatch:
        """`generate` for each prompt of the body: all are checked and fitted, then admitted as
        one, then the body's constraint is checked once, then each prompt is submitted on its
        own, in order (choices prompt-major). If one cannot be submitted, those already started
        are ended and its error is raised."""
        self.check_model(body.model, caller)
        body.check()
        prompts = body.to_prompts()
        if len(prompts) == 1:
            prompt_ids, params = self.prepare(body, prompts[0])
            return await self.start(body, prompt_ids, params, caller)
        if len(prompts) > self.config.max_batched_prompts:
            raise APIError(400, f"{len(prompts)} prompts in one request: this server takes at most "
                                f"{self.config.max_batched_prompts} (--max-batched-prompts)", "prompt")
        prepared = [self._prepare_nth(body, prompt, i) for i, prompt in enumerate(prompts)]
        # NOTE: one admission for the whole batch: prompts admitted one by one could each hold
        # slots while waiting for more (two batches, or more sequences than slots: a deadlock).
        admission = await self.admit(caller, sum(_reserved(ids, params) for ids, params in prepared),
                                     sum(params.n for _, params in prepared), parts=len(prepared))
        await self.check_constraint(body, caller, admission)
        generations: list[Generation] = []
        try:
            for prompt_ids, params in prepared:
                generations.append(await self.submit(prompt_ids, params, body.stop_strings, caller,
                                                     admission, first_index=len(generations) * params.n))
        except BaseException:
            await GenerationBatch(generations).close()
            admission.abandon()
            raise
        return GenerationBatch(generations)

    def prepare(self, body: GenerationBody, prompt: Prompt) -> tuple[list[int], SamplingParams]:
        """One prompt's ids (checked against the vocabulary) and its sampling parameters, with
        the completion fitted into the context."""
        prompt_ids = self.prompt_ids(prompt)
        if not isinstance(prompt, ChatPrompt):
            self.check_ids(prompt_ids, prompt.field)
        max_tokens = self.max_tokens(len(prompt_ids), body.budget(), prompt.field)
        check_scoring(body, self.config.max_logprobs)  # bodies that can ask for their prompt's logprobs
        params = body.sampling(max_tokens)
        if isinstance(prompt, ChatPrompt) and self.reasoning is not None:  # constrain the answer only
            params = self.reasoning.after_thinking(params, prompt_ids)
        self.check_ids(list(params.logit_bias or ()), body.sampling_path + "logit_bias")
        return prompt_ids, params

    async def check_constraint(self, body: GenerationBody, caller: Caller,
                               admission: "Admission") -> None:
        """A 400 naming the field when the body's output constraint is over a bound or does not
        compile (one check for all of a batch's prompts: they share it); 429/503 past the bounds
        of compiles waiting for a worker. Any refusal, or a cancel (the client left), gives the
        admission back at once with nothing used: the ticket is not held, the rate stays spent."""
        if body.constraint is None:
            return
        try:
            await self.grammar.check(*body.constraint, principal=caller.limit_key)
        except BaseException:
            admission.abandon()
            raise

    def _prepare_nth(self, body: GenerationBody, prompt: Prompt, index: int) -> tuple[list[int], SamplingParams]:
        try:
            return self.prepare(body, prompt)
        except APIError as exc:
            raise APIError(exc.status, f"prompt {index} of the batch: {exc.message}", exc.param,
                           exc.code, exc.headers) from None

    def tokenize(self, body: PromptBody, caller: Caller) -> list[int]:
        self.check_model(body.model, caller)
        body.check()
        return self.prompt_ids(body.to_prompt())

    def detokenize(self, model: str | None, ids: list[int], caller: Caller) -> str:
        self.check_model(model, caller)
        self.check_ids(ids, "tokens")
        return self.backend.decode(ids, skip_special_tokens=False)

    def models(self, caller: Caller) -> list[str]:
        """The served names this caller may use."""
        return self.served.listed(caller.may_use)

    def check_model(self, name: str | None, caller: Caller) -> None:
        """404 for a name not served, 403 for one the caller may not use; notes the served name
        it stands for (an alias stands for the first) for the audit (`config/server.py: ServedNames`)."""
        served = self.served.resolve(name) if name is not None else self.model_name
        if served is None:
            raise APIError(404, f"The model '{name}' does not exist", "model", "model_not_found")
        if not self.served.allowed(served, caller.may_use):
            raise APIError(403, f"'{caller.name}' may not use the model '{name or served}'", "model",
                           "model_not_allowed")
        if caller.record is not None:
            caller.record.model = served

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, ChatPrompt):
            for message in prompt.conversation:
                check_text(message["content"], prompt.field)
            return self._chat_ids(prompt)
        if isinstance(prompt, TextPrompt):
            check_text(prompt.text, prompt.field)
            return list(self.tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens).input_ids)
        return list(prompt.ids)

    def _chat_ids(self, prompt: ChatPrompt) -> list[int]:
        if prompt.continue_final_message and prompt.add_generation_prompt:
            raise APIError(400, "'continue_final_message' needs 'add_generation_prompt' set to false",
                           "continue_final_message")
        try:
            ids = self.tokenizer.apply_chat_template(
                prompt.conversation, tools=prompt.tools, add_generation_prompt=prompt.add_generation_prompt,
                continue_final_message=prompt.continue_final_message, tokenize=True, return_dict=False,
                **(prompt.template_kwargs or {}))
        except Exception as exc:  # a template may raise anything (jinja's raise_exception)
            raise APIError(400, f"the chat template rejected these messages: {exc}", prompt.field) from None
        return list(ids)

    def check_ids(self, ids: list[int], field: str) -> None:
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} in '{field}' is outside the vocabulary "
                                f"(size {self.vocab_size})", field)

    def max_tokens(self, prompt_len: int, budget: Budget, prompt_field: str) -> int:
        """The completion length; 400 naming both numbers when it cannot fit the context."""
        if prompt_len == 0:
            raise APIError(400, "the prompt is empty: give at least one token", prompt_field)
        room = self.max_model_len - prompt_len
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} "
                                f"tokens, but the prompt has {prompt_len} tokens; shorten the prompt.",
                           prompt_field, "context_length_exceeded")
        requested = budget.requested
        if requested is None:
            return room if budget.default is None else min(budget.default, room)
        if requested > room:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} "
                                f"tokens. However, you requested {prompt_len + requested} tokens "
                                f"({prompt_len} in the prompt, {requested} for the completion). "
                                "Reduce the prompt or the completion length.",
                           budget.field, "context_length_exceeded")
        return requested

    async def start(self, body: GenerationBody, prompt_ids: list[int], params: SamplingParams,
                    caller: Caller) -> Generation:
        """Admit one generation, check its constraint, then submit it to a rank. Its slot is
        given back however it ends."""
        admission = await self.admit(caller, _reserved(prompt_ids, params), params.n)
        await self.check_constraint(body, caller, admission)
        return await self.submit(prompt_ids, params, body.stop_strings, caller, admission)

    async def admit(self, caller: Caller, tokens: int, seqs: int, parts: int = 1) -> "Admission":
        """Engines up; then `seqs` slots, the queue bound and the caller's limits from the shared
        limiter, for a request of `parts` generations (a batch's prompts) as one."""
        if not any(r.alive for r in self.client.ranks):
            raise APIError(503, "no engine rank is available")
        ticket = await self._acquire(caller, tokens, seqs)
        return Admission(self.limits, ticket, caller.record, parts)

    async def submit(self, prompt_ids: list[int], params: SamplingParams, stops: list[str],
                     caller: Caller, admission: "Admission", first_index: int = 0) -> Generation:
        """Start one admitted generation on a rank; it settles its part of `admission` when it ends."""
        on_end = admission.part()
        generation = Generation(self.client, self.backend, prompt_ids, params, stops,
                                caller.cache_salt, on_end=on_end, first_index=first_index)
        try:
            await generation.submit()
        except BaseException:
            on_end(0, 0)  # NOTE: cancelled mid-send; a no-op when submit already ended it
            raise
        return generation

    async def _acquire(self, caller: Caller, tokens: int, seqs: int) -> int | None:
        """A limits ticket: waits (round-robin by tenant) while the engines' slots are full; 429
        over the caller's limits, 503 past --max-queued-requests, both with Retry-After."""
        if self.limits is None:
            return None
        try:
            return await self.limits.acquire(caller.limit_key, caller.limits, tokens,
                                             caller.principal.tenant, seqs)
        except LimitExceeded as exc:
            refusal = exc.refusal
            raise APIError(refusal.status, refusal.message,
                           code="rate_limit_exceeded" if refusal.status == 429 else None,
                           headers={"Retry-After": refusal.retry_after_header}) from None


def _reserved(prompt_ids: list[int], params: SamplingParams) -> int:
    """The tokens a generation reserves against its caller's token rate: prompt and budget."""
    return len(prompt_ids) + params.max_tokens * params.n


class Admission:
    """What admitting one request took from its caller: a limits ticket (None without shared
    limits) and its audit record. The request has `parts` generations (a batch's prompts); each
    settles its part once, when it ends, and the ticket goes back with the last."""

    def __init__(self, limits: LimitsClient | None, ticket: int | None,
                 record: RequestRecord | None, parts: int = 1) -> None:
        self.limits, self.ticket, self.record = limits, ticket, record
        self.pending, self.used_tokens = parts, 0

    def part(self) -> Callable[[int, int], None]:
        """The settle call of one generation: only its first call counts."""
        settled = False

        def settle(prompt_tokens: int, completion_tokens: int) -> None:
            nonlocal settled
            if not settled:
                settled = True
                self.settle(prompt_tokens, completion_tokens)
        return settle

    def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """One part ended: add its counts to the audit record; the last part gives back the
        limits with the tokens all parts used."""
        if self.pending <= 0:
            return
        self.pending -= 1
        self.used_tokens += prompt_tokens + completion_tokens
        if self.record is not None:
            self.record.prompt_tokens = (self.record.prompt_tokens or 0) + prompt_tokens
            self.record.completion_tokens = (self.record.completion_tokens or 0) + completion_tokens
        if self.pending == 0:
            self._release()

    def abandon(self) -> None:
        """The parts never started (a batch cut short) will not settle: give the ticket back now."""
        if self.pending > 0:
            self.pending = 0
            self._release()

    def _release(self) -> None:
        if self.ticket is not None:
            ticket, self.ticket = self.ticket, None
            self.limits.release(ticket, self.used_tokens)
