"""What every route of one API-server process shares: config, tokenizer, engine client,
and the checks that happen before a request is admitted (model name, prompt, context, queue).
"""
from __future__ import annotations

import hashlib

from fastapi import Request

from bastion.config.server import ServerConfig
from bastion.sampling_params import SamplingParams
from bastion.security.shared_limits import LimitExceeded, LimitsClient
from bastion.server.engine_client import EngineClient
from bastion.server.generation import Generation
from bastion.server.http.errors import APIError
from bastion.server.http.middleware import principal_of, record_of
from bastion.server.routes.protocol import ChatMessage

RETRY_AFTER_SECONDS = "1"


class ServerState:
    """Shared by the routes of one API-server process."""

    def __init__(self, config: ServerConfig, client: EngineClient, tokenizer, max_model_len: int,
                 vocab_size: int, limits: LimitsClient | None = None) -> None:
        self.config, self.client, self.tokenizer = config, client, tokenizer
        self.limits = limits
        self.backend = tokenizer.backend_tokenizer
        self.max_model_len, self.vocab_size = max_model_len, vocab_size
        self.model_name = config.served_model_names[0]

    def check_model(self, name: str | None, request: Request) -> None:
        """404 for a name not served, 403 for one the caller may not use; notes it for the audit."""
        if name is not None and name not in self.config.served_model_names:
            raise APIError(404, f"The model '{name}' does not exist", "model", "model_not_found")
        name = name or self.model_name
        principal = principal_of(request)
        if not principal.may_use(name):
            raise APIError(403, f"'{principal.name}' may not use the model '{name}'", "model",
                           "model_not_allowed")
        record = record_of(request)
        if record is not None:
            record.model = name

    def chat_prompt(self, messages: list[ChatMessage], add_generation_prompt: bool = True,
                    continue_final_message: bool = False) -> list[int]:
        conversation = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                        for m in messages]
        if continue_final_message and add_generation_prompt:
            raise APIError(400, "'continue_final_message' needs 'add_generation_prompt' set to false",
                           "continue_final_message")
        try:
            ids = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, tokenize=True, return_dict=False)
        except Exception as exc:  # a template may raise anything (jinja's raise_exception)
            raise APIError(400, f"the chat template rejected these messages: {exc}", "messages") from None
        return list(ids)

    def text_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def check_ids(self, ids: list[int], field: str) -> None:
        bad = next((t for t in ids if t >= self.vocab_size), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} in '{field}' is outside the vocabulary "
                                f"(size {self.vocab_size})", field)

    def max_tokens(self, prompt_len: int, requested: int | None, default: int | None,
                   field: str = "max_tokens", prompt_field: str = "prompt") -> int:
        """The completion budget; 400 naming both numbers when it cannot fit the context."""
        if prompt_len == 0:
            raise APIError(400, "the prompt is empty: give at least one token", prompt_field)
        room = self.max_model_len - prompt_len
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} "
                                f"tokens, but the prompt has {prompt_len} tokens; shorten the prompt.",
                           prompt_field, "context_length_exceeded")
        if requested is None:
            return room if default is None else min(default, room)
        if requested > room:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} "
                                f"tokens. However, you requested {prompt_len + requested} tokens "
                                f"({prompt_len} in the prompt, {requested} for the completion). "
                                "Reduce the prompt or the completion length.",
                           field, "context_length_exceeded")
        return requested

    def admit(self) -> None:
        """503 with no rank up, or with the queue over its bound."""
        if not any(r.alive for r in self.client.ranks):
            raise APIError(503, "no engine rank is available")
        limit = self.config.max_queued_requests
        if limit is not None and self.client.queued() >= limit:
            raise APIError(503, f"the server is overloaded: {self.client.queued()} requests are "
                                f"queued (--max-queued-requests {limit}); retry later",
                           headers={"Retry-After": RETRY_AFTER_SECONDS})

    async def start_generation(self, prompt_ids: list[int], params: SamplingParams,
                               stops: list[str], request: Request) -> Generation:
        """Admit (engines up, queue bound, the caller's limits), then submit to a rank."""
        self.admit()
        principal, record = principal_of(request), record_of(request)
        ticket = await self._acquire(principal, len(prompt_ids) + params.max_tokens * params.n)

        def settle(prompt_tokens: int, completion_tokens: int) -> None:
            if ticket is not None:
                self.limits.release(ticket, prompt_tokens + completion_tokens)
            if record is not None:
                record.prompt_tokens, record.completion_tokens = prompt_tokens, completion_tokens

        generation = Generation(self.client, self.backend, prompt_ids, params, stops,
                                tenant_salt(principal.tenant), on_end=settle)
        await generation.submit()
        return generation

    async def _acquire(self, principal, tokens: int) -> int | None:
        if self.limits is None:
            return None
        try:
            return await self.limits.acquire(principal.limit_key, principal.limits, tokens)
        except LimitExceeded as exc:
            raise APIError(429, exc.refusal.message, code="rate_limit_exceeded",
                           headers={"Retry-After": exc.refusal.retry_after_header}) from None


def tenant_salt(tenant: str) -> str:
    """The engine's prefix-cache salt for `tenant`: tenants never share cached KV, and the engine
    sees an opaque value, never the tenant's name."""
    return hashlib.sha256(b"bastion-tenant\x00" + tenant.encode()).hexdigest()
