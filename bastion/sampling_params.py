"""Per-request sampling parameters, validated on construction."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from bastion.structured.spec import StructuredOutputs

# NOTE: OpenAI's current bound ("at most 1024 properties"; 300 until 2023).
MAX_LOGIT_BIAS = 1024
MAX_BIAS = 100.0

MAX_TRIGGER = 16  # tokens of grammar_starts_after (an end-of-thinking marker)

# Integers that travel to an engine fit its 64-bit tensors and the wire.
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1

# The values `_validate` accepts, field by field, as JSON Schema: the HTTP API's OpenAPI document
# shows them on every body field that carries the parameter (tests hold the two together).
# `max_tokens` is bounded by the context, `min_tokens <= max_tokens` across fields: said in words.
BOUNDS: dict[str, dict] = {
    "n": {"minimum": 1},
    "temperature": {"minimum": 0},
    "top_p": {"exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"anyOf": [{"const": -1}, {"minimum": 1, "maximum": INT64_MAX}]},
    "min_p": {"minimum": 0, "maximum": 1},
    "presence_penalty": {"minimum": -2, "maximum": 2},
    "frequency_penalty": {"minimum": -2, "maximum": 2},
    "repetition_penalty": {"exclusiveMinimum": 0},
    "max_tokens": {"minimum": 1},
    "min_tokens": {"minimum": 0},
    "logprobs": {"minimum": 0, "maximum": 20},
    "seed": {"minimum": INT64_MIN, "maximum": INT64_MAX},
    "stop_token_ids": {"items": {"minimum": 0, "maximum": INT64_MAX}},
}


@dataclass
class SamplingParams:
    """How to pick tokens for one request (the shape of vLLM's `SamplingParams`).

    `temperature=0` means greedy. `max_tokens=None` generates until the model's context is full.
    `logprobs=k` returns the chosen token's log-probability plus the top k alternatives, taken
    from the model's own distribution (before penalties, `logit_bias` and temperature).
    `logit_bias` maps token ids to a bias in [-100, 100] added to their logits before sampling
    (OpenAI's meaning: -100 bans a token, +100 all but forces it); at most 1024 entries.
    `structured_outputs` constrains the output to a JSON schema, regex, choice or grammar; the
    grammar's end finishes the sequence ("stop"), and its logprobs come from the constrained
    distribution (the tokens the grammar forbids have probability 0).
    `grammar_starts_after` (token ids, at most 16) holds that constraint back until the output
    ends with them: the tokens up to there are free (a reasoning model's thinking, up to its
    end marker; the API server sets it), the rest is constrained.
    `prompt_logprobs=k` (vLLM's): every prompt token's log-probability given the tokens before
    it, its rank and the top k there (engine/prompt_logprobs/); with it, `max_tokens=0`
    scores the prompt and generates nothing.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None
    structured_outputs: StructuredOutputs | None = None
    grammar_starts_after: list[int] | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = self._checked_logit_bias() or None
        self._validate()

    def _validate(self) -> None:
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (self.temperature >= 0, f"temperature must be non-negative, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k == -1 or self.top_k >= 1,
             f"top_k must be -1 (disabled) or at least 1, got {self.top_k}"),
            (self.top_k <= INT64_MAX, f"top_k must be at most 2**63 - 1, got {self.top_k}"),
            (self.seed is None or INT64_MIN <= self.seed <= INT64_MAX,
             f"seed must be a 64-bit integer (-2**63 to 2**63 - 1), got {self.seed}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (-2 <= self.presence_penalty <= 2,
             f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2,
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (self.repetition_penalty > 0,
             f"repetition_penalty must be positive, got {self.repetition_penalty}"),
            (self.max_tokens is None or self.max_tokens >= 1
             or (self.max_tokens == 0 and self.prompt_logprobs is not None),
             f"max_tokens must be at least 1, got {self.max_tokens}"),
            (self.prompt_logprobs is None or self.prompt_logprobs >= 0,
             f"prompt_logprobs must be non-negative, got {self.prompt_logprobs}"),
            (self.min_tokens >= 0, f"min_tokens must be non-negative, got {self.min_tokens}"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens,
             f"min_tokens ({self.min_tokens}) cannot exceed max_tokens ({self.max_tokens})"),
            (self.logprobs is None or 0 <= self.logprobs <= 20,
             f"logprobs must be between 0 and 20, got {self.logprobs}"),
            (all(isinstance(t, int) and 0 <= t <= INT64_MAX for t in self.stop_token_ids),
             "stop_token_ids must be integers in [0, 2**63 - 1]"),
            (self.grammar_starts_after is None or (
                self.structured_outputs is not None and 0 < len(self.grammar_starts_after) <= MAX_TRIGGER
                and all(isinstance(t, int) and 0 <= t <= INT64_MAX for t in self.grammar_starts_after)),
             f"grammar_starts_after must be 1 to {MAX_TRIGGER} token ids, with structured_outputs"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def _checked_logit_bias(self) -> dict[int, float]:
        bias = self.logit_bias or {}
        if not isinstance(bias, dict):
            raise ValueError("logit_bias must map token ids to biases")
        if len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias has {len(bias)} entries; at most {MAX_LOGIT_BIAS} are allowed")
        for token, value in bias.items():
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise ValueError(f"logit_bias keys must be token ids (non-negative integers), got {token!r}")
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not math.isfinite(value) or abs(value) > MAX_BIAS):
                raise ValueError(f"logit_bias values must be in [-100, 100], got {value!r} for token {token}")
        return {token: float(value) for token, value in bias.items()}

    def check_vocabulary(self, vocab_size: int) -> None:
        """Raise ValueError when a `logit_bias` key is not a token of a `vocab_size` vocabulary."""
        bad = next((t for t in self.logit_bias or () if t >= vocab_size), None)
        if bad is not None:
            raise ValueError(f"logit_bias key {bad} is outside the vocabulary (size {vocab_size})")

    @property
    def greedy(self) -> bool:
        """True when the next token is always the arg-max."""
        return self.temperature < 1e-5 or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        """True when any presence, frequency or repetition penalty applies."""
        return (self.presence_penalty != 0 or self.frequency_penalty != 0
                or self.repetition_penalty != 1.0)
