"""What a route hands the front end, in the front end's terms: the prompt and the completion
budget, each naming the request field it came from, so errors point the client at it; and the
parsed bodies that hold them (`PromptBody`, `GenerationBody`, `BatchBody`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bastion.server.http.errors import APIError

if TYPE_CHECKING:
    from bastion.sampling_params import SamplingParams
    from bastion.server.grammar_check import Constraint


@dataclass(frozen=True)
class ChatPrompt:
    """Messages for the chat template (`{"role", "content", "name"?, "tool_calls"?,
    "tool_call_id"?}` each) and the tools it shows (OpenAI's tool objects; None: none), and
    the template's extra variables (`chat_template_kwargs`, checked: routes/fields/template_kwargs.py)."""

    conversation: list[dict]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    field: str = "messages"
    tools: list[dict] | None = None
    template_kwargs: dict | None = None


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


class PromptBody(Protocol):
    """A parsed request body that names a model and holds a prompt."""

    @property
    def model(self) -> str | None: ...

    def check(self) -> None:
        """A 400 for what the body asks that the server does not do."""

    def to_prompt(self) -> Prompt: ...


class GenerationBody(PromptBody, Protocol):
    """A generation route's parsed body: a prompt, a completion budget, sampling and stops."""

    sampling_path: str  # where the sampling fields sit in the body ("sampling_params." in SGLang's)
    constraint: Constraint | None  # the output constraint and its field, if the body gives one

    def budget(self) -> Budget: ...

    def sampling(self, max_tokens: int) -> SamplingParams: ...

    @property
    def stop_strings(self) -> list[str]: ...


class BatchBody(GenerationBody, Protocol):
    """A body that may hold several prompts (`/v1/completions`), each its own generation."""

    def to_prompts(self) -> list[Prompt]: ...


def check_text(text: str, field: str) -> None:
    """400 for text that is not Unicode a tokenizer can read (JSON lets a lone surrogate through)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(400, f"'{field}' is not valid Unicode: a lone surrogate at position "
                            f"{exc.start}", field) from None
