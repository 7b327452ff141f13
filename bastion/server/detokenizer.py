"""Incremental detokenization and stop strings for one generated sequence.

Text comes from `tokenizers`' `DecodeStream`, primed with the tail of the prompt so the first
generated token gets its spacing right (SentencePiece) and split UTF-8 characters are held
until complete. Stop strings are searched in the new text only; text that could still become
a stop string is held back from streaming until it cannot.
"""
from __future__ import annotations

from tokenizers.decoders import DecodeStream

PROMPT_CONTEXT_TOKENS = 8


class SequenceText:
    """The text of one sequence so far, cut at the first stop string."""

    def __init__(self, backend, prompt_ids: list[int], stops: list[str],
                 skip_special_tokens: bool = True) -> None:
        self.backend = backend
        self.stream = DecodeStream(ids=list(prompt_ids[-PROMPT_CONTEXT_TOKENS:]),
                                   skip_special_tokens=skip_special_tokens)
        self.stops = stops
        self.longest_stop = max((len(s) for s in stops), default=0)
        self.text = ""
        self.released = 0
        self.stopped_by: str | None = None

    def add(self, token_ids: list[int]) -> None:
        """Decode new tokens; stops at (and cuts off) the first stop string."""
        for token_id in token_ids:
            if self.stopped_by is not None:
                return
            piece = self.stream.step(self.backend, token_id)
            if piece:
                self._append(piece)

    def _append(self, piece: str) -> None:
        start = max(0, len(self.text) - self.longest_stop + 1)
        self.text += piece
        if not self.stops:
            return
        hits = [(pos, stop) for stop in self.stops if (pos := self.text.find(stop, start)) >= 0]
        if hits:
            pos, stop = min(hits)
            self.text = self.text[:pos]
            self.stopped_by = stop

    def release(self, final: bool = False) -> str:
        """Text not yet handed out that can no longer turn into a stop string."""
        end = len(self.text)
        if not final and self.stopped_by is None:
            end -= self._pending_stop_prefix()
        delta = self.text[self.released:end]
        self.released = max(self.released, end)
        return delta

    def _pending_stop_prefix(self) -> int:
        for k in range(min(self.longest_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(stop.startswith(tail) for stop in self.stops):
                return k
        return 0
