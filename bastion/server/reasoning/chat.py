"""The thinking of a chat answer, in chat completions' shape.

With a reasoning parser on (server/reasoning/), a chat message carries its thinking apart from
its `content`, under two names with the same text: `reasoning_content` (SGLang's,
llama-server's, DeepSeek's API, and vLLM's until it renamed it) and `reasoning` (vLLM's name
since); null when the answer had none. `content` is the answer after the thinking, null when
the thinking took the whole output (vLLM's). Streamed, a delta carries the thinking it gained
under the same two names, and `content` what the answer gained; the deltas joined give the
whole message. With `include_reasoning: false` (vLLM's) the thinking is left out, and the
content is still only the answer. Tool calls are read from the answer alone.
"""
from __future__ import annotations

from bastion.server.reasoning.choose import Reasoning
from bastion.server.reasoning.splitter import ReasoningSplitter, split_text

NAMES = ("reasoning_content", "reasoning")


class ChatReasoning:
    """Splits the thinking from the answers of one chat request's sequences."""

    def __init__(self, reasoning: Reasoning, prompt_ids: list[int], include: bool = True) -> None:
        self.reasoning, self.prompt_ids, self.include = reasoning, prompt_ids, include
        self._streams: dict[int, ReasoningSplitter] = {}

    def message(self, text: str) -> tuple[str, dict]:
        """A whole answer: its answer text, and the message's reasoning fields."""
        split = split_text(self.reasoning.splitter(self.prompt_ids), text)
        return split.content, self._fields(split.reasoning or None)

    def delta(self, index: int, text: str, final: bool) -> tuple[str, dict]:
        """One streamed chunk of sequence `index`: the answer text it gained, and the delta's
        reasoning fields (none when it gained no thinking)."""
        if index not in self._streams:
            self._streams[index] = self.reasoning.splitter(self.prompt_ids)
        splitter = self._streams[index]
        split = splitter.feed(text)
        if final:
            split += splitter.finish()
        return split.content, self._fields(split.reasoning) if split.reasoning else {}

    def _fields(self, thinking: str | None) -> dict:
        return {name: thinking for name in NAMES} if self.include else {}

    @staticmethod
    def whole(message: dict, fields: dict) -> dict:
        """`message` with its reasoning fields; an empty answer after thinking is null."""
        if fields.get(NAMES[0]) and message.get("content") == "":
            message = {**message, "content": None}
        return {**message, **fields}
