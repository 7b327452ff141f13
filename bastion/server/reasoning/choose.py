"""The reasoning format a server reads, and what it gives each chat request.

`--reasoning-parser` names one (`qwen3`, `deepseek_r1`; SGLang's `deepseek-r1`), `none` reads
none (the thinking stays in `content`, as vLLM without the flag), and `auto` (the default) picks
one from the model's chat template, as the tool-call parser is picked:

| the chat template has                         | format        |
|-----------------------------------------------|---------------|
| `</think>` and DeepSeek's `<｜Assistant｜>`     | `deepseek_r1` |
| `</think>` (Qwen3, QwQ, other `<think>` ones) | `qwen3`       |
| no `</think>`                                 | none          |
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from bastion.sampling_params import SamplingParams
from bastion.server.reasoning.formats import FORMATS, Phase, ThinkFormat, format_named
from bastion.server.reasoning.splitter import ReasoningSplitter

AUTO, NONE = "auto", "none"
PROMPT_TAIL_TOKENS = 16  # enough for `<think>\n` however the tokenizer splits it
_DEEPSEEK = "<｜Assistant｜>"


def format_for_template(template: str | dict | None) -> ThinkFormat | None:
    """The format a chat template's text calls for (None: it marks no thinking)."""
    text = "\n".join(template.values()) if isinstance(template, dict) else (template or "")
    if FORMATS["qwen3"].end not in text:
        return None
    return FORMATS["deepseek_r1"] if _DEEPSEEK in text else FORMATS["qwen3"]


@dataclass(frozen=True)
class Reasoning:
    """How this server reads thinking: the format, and its end marker as token ids (what a
    constraint's grammar waits for)."""

    fmt: ThinkFormat
    end_ids: tuple[int, ...]
    backend: object  # the tokenizer's backend: decodes a prompt's tail

    @classmethod
    def of(cls, flag: str, tokenizer) -> "Reasoning | None":
        """From --reasoning-parser (`auto`: the template's; `none`: None) and the tokenizer."""
        if flag == NONE:
            return None
        fmt = format_for_template(tokenizer.chat_template) if flag == AUTO else format_named(flag)
        if fmt is None:
            return None
        end_ids = tuple(tokenizer.encode(fmt.end, add_special_tokens=False))
        return cls(fmt, end_ids, tokenizer.backend_tokenizer)

    def first_phase(self, prompt_ids: list[int]) -> Phase:
        """Where the output of this prompt starts (its rendered tail says)."""
        tail = self.backend.decode(list(prompt_ids[-PROMPT_TAIL_TOKENS:]), skip_special_tokens=False)
        return self.fmt.first_phase(tail)

    def splitter(self, prompt_ids: list[int]) -> ReasoningSplitter:
        """A fresh splitter for one sequence answering this prompt."""
        return ReasoningSplitter(self.fmt, self.first_phase(prompt_ids))

    def grammar_trigger(self, prompt_ids: list[int]) -> list[int] | None:
        """The tokens after which an output constraint starts (vLLM's default: the grammar
        lets the thinking be and constrains the answer); None when the prompt left no thinking."""
        if self.first_phase(prompt_ids) is Phase.ANSWER:
            return None
        return list(self.end_ids)

    def after_thinking(self, params: SamplingParams, prompt_ids: list[int]) -> SamplingParams:
        """`params` whose output constraint, if any, starts after the thinking."""
        trigger = self.grammar_trigger(prompt_ids) if params.structured_outputs is not None else None
        return params if trigger is None else replace(params, grammar_starts_after=trigger)
