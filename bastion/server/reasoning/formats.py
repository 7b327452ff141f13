"""The reasoning formats bastion reads: how a model marks its thinking, and where a sequence's
output starts (inside the thinking, after it, or where the model may still open it).

Both formats are vLLM's `--reasoning-parser` names (SGLang spells `deepseek_r1` as
`deepseek-r1`; both spellings are accepted):

| format        | markers               | output of a prompt that opens no think block          |
|---------------|-----------------------|-------------------------------------------------------|
| `qwen3`       | `<think>`, `</think>` | an answer, unless it opens with `<think>` itself       |
| `deepseek_r1` | `<think>`, `</think>` | already inside the thinking (R1 may omit `<think>`)    |

Where the output starts is read from the end of the rendered prompt, as vLLM's
`prompt_is_reasoning_end`: a prompt that ends in `<think>` (DeepSeek-R1's template, QwQ, Qwen3's
thinking-only templates) is answered from inside the thinking; one that ends in `</think>`
(Qwen3's template with `enable_thinking: false`) has no thinking left, so the whole output is
the answer. Only the prompt's tail counts: a `</think>` earlier in the conversation (a previous
turn's reasoning) does not switch thinking off.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Phase(enum.Enum):
    """Where a sequence's text is, read from left to right.

    OPENING -> THINKING -> ANSWER, or OPENING -> ANSWER (no `<think>` came first);
    STARTING -> THINKING -> ANSWER (a leading `<think>` is dropped, anything else is thinking).
    """

    OPENING = "opening"  # the model may open a think block: only whitespace and `<think>` so far
    STARTING = "starting"  # inside the thinking; a leading `<think>` (after whitespace) is dropped
    THINKING = "thinking"
    ANSWER = "answer"


@dataclass(frozen=True)
class ThinkFormat:
    """A model family's think markers, and where an output starts when the prompt does not say."""

    name: str
    start: str = "<think>"
    end: str = "</think>"
    starts_inside: bool = False  # True: an output is thinking until `end`, opened or not

    def first_phase(self, prompt_tail: str) -> Phase:
        """Where the output of a prompt ending in `prompt_tail` (decoded, special tokens kept)
        starts."""
        tail = prompt_tail.rstrip()
        if tail.endswith(self.end):
            return Phase.ANSWER
        if tail.endswith(self.start) or self.starts_inside:
            return Phase.STARTING
        return Phase.OPENING


FORMATS = {"qwen3": ThinkFormat("qwen3"), "deepseek_r1": ThinkFormat("deepseek_r1", starts_inside=True)}
SPELLINGS = {"deepseek-r1": "deepseek_r1"}  # SGLang's


def format_named(name: str) -> ThinkFormat:
    """The format of a parser name, in vLLM's or SGLang's spelling; KeyError for others."""
    return FORMATS[SPELLINGS.get(name, name)]
