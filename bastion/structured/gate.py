"""The stages of a sequence's grammar: where its constraint starts.

    compiling -> (free -> ) constrained -> done

A sequence with `structured_outputs` gets its matcher once the grammar compiled. Without
`grammar_starts_after` the grammar constrains from the first output token. With it (the token
ids of a reasoning model's end-of-thinking marker, set by the API server) the sequence is first
free: its tokens go unconstrained and unconsumed while a `GrammarGate` watches them, and the
grammar starts with the token after the first place where the output ends with those ids
(vLLM's default: the thinking is free, the answer after it is constrained). A sequence that
never writes them is never constrained, as in vLLM.
"""
from __future__ import annotations


class GrammarGate:
    """A sequence's compiled matcher, held back until its output ends with `trigger`."""

    def __init__(self, trigger: list[int], matcher) -> None:
        self.trigger, self.matcher = tuple(trigger), matcher
        self._recent: tuple[int, ...] = ()

    def passes(self, token: int) -> bool:
        """Take the next output token; True when the output now ends with the trigger."""
        self._recent = (self._recent + (token,))[-len(self.trigger):]
        return self._recent == self.trigger
