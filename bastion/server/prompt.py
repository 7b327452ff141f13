"""What a route hands the front end, in the front end's terms: the prompt and the completion
budget. Each names the request field it came from, so errors point the client at it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatPrompt:
    """Messages for the chat template (`{"role", "content", "name"?, "tool_calls"?,
    "tool_call_id"?}` each) and the tools it shows (OpenAI's tool objects; None: none)."""

    conversation: list[dict]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    field: str = "messages"
    tools: list[dict] | None = None


@dataclass(frozen=True)
class TextPrompt:
    text: str
    field: str
    add_special_tokens: bool = True


@dataclass(frozen=True)
class TokenPrompt:
    ids: list[int]
    field: str


Prompt = ChatPrompt | TextPrompt | TokenPrompt


@dataclass(frozen=True)
class Budget:
    """The completion length a client asked for (`requested`, from `field`), and the default
    when it asked for none (None: as much as the context holds)."""

    requested: int | None
    default: int | None
    field: str = "max_tokens"
