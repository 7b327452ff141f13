"""The offline API: `LLM(model=PATH).generate(prompts, params)` and `.chat(messages, params)`."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.engine.outputs import TokenLogprob
from bastion.model.demo import default_model_path
from bastion.model.tokenizer import load_tokenizer
from bastion.sampling_params import SamplingParams

Prompt = str | list[int]


@dataclass
class CompletionOutput:
    """One generated sequence."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None

    @property
    def cumulative_logprob(self) -> float | None:
        return None if self.logprobs is None else sum(lp.logprob for lp in self.logprobs)


@dataclass
class RequestOutput:
    """A prompt and its n completions."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    num_cached_tokens: int = 0


class LLM:
    """Runs a local Llama-family checkpoint in this process, batching every prompt together."""

    def __init__(self, model: str | Path | None = None, **engine_args) -> None:
        model = str(model or default_model_path())
        self.config = EngineConfig.from_kwargs(model, **engine_args)
        self.engine = EngineCore(self.config)
        self.tokenizer = load_tokenizer(model)
        self._ids = itertools.count()

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None
                 ) -> list[RequestOutput]:
        """Complete each prompt (text or token ids); outputs come back in prompt order.

        ValueError for an invalid request, a structured-output constraint that does not compile
        included (the engine's message; nothing of the call is left running)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params)} sampling params")
        encoded = [self._encode(p) for p in prompts]
        for ids, sp in zip(encoded, params):
            self.engine.validate(ids, sp)  # NOTE: validate all before queuing any
        results: dict[str, RequestOutput] = {}
        for prompt, ids, sp in zip(prompts, encoded, params):
            rid = str(next(self._ids))
            self.engine.add_request(rid, ids, sp)
            results[rid] = RequestOutput(rid, prompt if isinstance(prompt, str) else None, ids)
        self._run(results, dict(zip(results, params)))
        return list(results.values())

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | None = None,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation (or several) and generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [list(self.tokenizer.apply_chat_template(
            conv, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False))
            for conv in conversations]
        return self.generate(prompts, sampling_params)

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt).input_ids if prompt else []
        return list(prompt)

    def _run(self, results: dict[str, RequestOutput], params: dict[str, SamplingParams]) -> None:
        tokens: dict[tuple[str, int], list[int]] = {}
        logprobs: dict[tuple[str, int], list[TokenLogprob]] = {}
        reasons: dict[tuple[str, int], str] = {}
        while self.engine.has_unfinished:
            self.engine.wait_for_grammars()
            outputs = self.engine.step()
            failed = self.engine.take_errors()
            if failed:  # a grammar that did not compile: end the whole call, as validate() would
                for rid in results:
                    self.engine.abort_request(rid)
                raise ValueError(failed[0][1])
            for out in outputs:
                key = (out.request_id, out.index)
                tokens.setdefault(key, []).extend(out.new_token_ids)
                logprobs.setdefault(key, []).extend(out.new_logprobs)
                results[out.request_id].num_cached_tokens = out.num_cached_tokens
                if out.finish_reason is not None:
                    reasons[key] = out.finish_reason.value
        for rid, result in results.items():
            sp = params[rid]
            for i in range(sp.n):
                ids = tokens.get((rid, i), [])
                text = self.tokenizer.decode(ids, skip_special_tokens=sp.skip_special_tokens)
                result.outputs.append(CompletionOutput(
                    i, text, ids, reasons.get((rid, i)),
                    logprobs.get((rid, i), []) if sp.logprobs is not None else None))
