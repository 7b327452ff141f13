"""One sequence's text split into its thinking and its answer, as it streams.

`ReasoningSplitter.feed(text)` takes the text released so far (any chunking: a marker may be
split across chunks) and returns the `Split` that is certain now; `finish()` flushes what was
held back. The splits joined are the same whatever the chunking, so a whole text is split by
feeding it at once (`split_text`): streamed and non-streamed answers agree by construction.

Rules (vLLM's `qwen3` and `deepseek_r1` parsers, see `formats.py` for where a sequence starts):
* the first `</think>` ends the thinking; all text after it is the answer (a later `</think>`
  or `<think>` is answer text);
* a `<think>` at the very start (after whitespace) opens the thinking and is dropped, with that
  whitespace;
* text after `<think>` that never reaches `</think>` (the length limit cut it) is all thinking;
* in `OPENING` (Qwen3 when the prompt opened nothing), an output that does not start with
  `<think>` is all answer, its leading whitespace included.
"""
from __future__ import annotations

from dataclasses import dataclass

from bastion.server.reasoning.formats import Phase, ThinkFormat


@dataclass
class Split:
    """Text of the thinking and text of the answer, in that order (either may be empty)."""

    reasoning: str = ""
    content: str = ""

    def __add__(self, other: "Split") -> "Split":
        return Split(self.reasoning + other.reasoning, self.content + other.content)


def _held(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker` (kept back until known)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


class ReasoningSplitter:
    """Splits one sequence's text; make one per sequence (`Reasoning.splitter`)."""

    def __init__(self, fmt: ThinkFormat, phase: Phase) -> None:
        self.fmt, self.phase = fmt, phase
        self.pending = ""  # text not yet released: a possible marker (or leading whitespace)

    def feed(self, text: str) -> Split:
        """The split of `text` that is certain now."""
        self.pending += text
        out = Split()
        while self.pending:
            step = self._step()
            if step is None:
                break
            out += step
        return out

    def finish(self) -> Split:
        """The text ended: what was held back, where it stands."""
        held, self.pending = self.pending, ""
        if self.phase in (Phase.OPENING, Phase.ANSWER):
            return Split(content=held)
        return Split(reasoning=held)

    def _step(self) -> Split | None:
        """Release what the current phase can; None when the rest must wait for more text."""
        text = self.pending
        if self.phase is Phase.ANSWER:
            self.pending = ""
            return Split(content=text)
        if self.phase in (Phase.OPENING, Phase.STARTING):
            return self._opening(text)
        end = text.find(self.fmt.end)
        if end >= 0:
            self.phase, self.pending = Phase.ANSWER, text[end + len(self.fmt.end):]
            return Split(reasoning=text[:end])
        keep = _held(text, self.fmt.end)
        if keep == len(text):
            return None
        self.pending = text[len(text) - keep:]
        return Split(reasoning=text[:len(text) - keep])

    def _opening(self, text: str) -> Split | None:
        """Leading whitespace, then `<think>` (dropped) or anything else."""
        body = text.lstrip()
        if body.startswith(self.fmt.start):
            self.phase = Phase.THINKING
            self.pending = body[len(self.fmt.start):]
            return Split()
        if not body or self.fmt.start.startswith(body):
            return None  # still whitespace, or part of `<think>`
        self.phase = Phase.ANSWER if self.phase is Phase.OPENING else Phase.THINKING
        return Split()


def split_text(splitter: ReasoningSplitter, text: str) -> Split:
    """A whole text's split."""
    return splitter.feed(text) + splitter.finish()
