"""`chat_template_kwargs` and `reasoning_effort`: extra variables for the chat template (vLLM's
and SGLang's fields; Qwen3 reads `enable_thinking`, gpt-oss-style templates `reasoning_effort`).

Any key a template could read is passed on, except those that would take the place of what the
server itself gives the template or asks of the renderer: the conversation and its tools, the
generation-prompt switches, the tokenizer's special tokens, the renderer's own arguments
(`chat_template`, `tokenize`, `return_tensors`, ...) and its helpers (`raise_exception`). Those
are a 400 naming `chat_template_kwargs.<key>`, as is a key no template could name.
`reasoning_effort`, when given, is the template's `reasoning_effort` (over a key of that name
in `chat_template_kwargs`), as vLLM passes it.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from bastion.server.http.errors import APIError

FIELD = "chat_template_kwargs"
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]  # OpenAI's values

RESERVED = frozenset({
    # what the server gives the template
    "messages", "conversation", "tools", "documents", "add_generation_prompt", "continue_final_message",
    # the special tokens transformers passes as variables
    "bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token",
    "additional_special_tokens",
    # apply_chat_template's own arguments, and the renderer's helpers
    "chat_template", "tokenize", "sanitize_control_tokens", "padding", "truncation", "max_length",
    "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs",
    "raise_exception", "strftime_now",
})


def template_kwargs(kwargs: dict[str, Any] | None, reasoning_effort: str | None) -> dict[str, Any] | None:
    """The variables to add to the template (None: none); a 400 naming the key of a refused one."""
    out = dict(kwargs or {})
    for key in out:
        if not key.isidentifier():
            raise APIError(400, f"'{key}' cannot be a chat template variable (not an identifier)",
                           f"{FIELD}.{key}")
        if key in RESERVED:
            raise APIError(400, f"'{key}' is set by the server and cannot be given in {FIELD}",
                           f"{FIELD}.{key}")
    if reasoning_effort is not None:
        out["reasoning_effort"] = reasoning_effort
    return out or None


class TemplateKwargsField(BaseModel):
    """A body with `chat_template_kwargs` (chat, and `/tokenize` with messages)."""

    model_config = ConfigDict(strict=True)
    chat_template_kwargs: dict[str, Any] | None = None  # vLLM's, SGLang's: e.g. enable_thinking

    def template_variables(self) -> dict[str, Any] | None:
        return template_kwargs(self.chat_template_kwargs, None)


class ChatTemplateFields(TemplateKwargsField):
    """A chat body's template and reasoning fields."""

    reasoning_effort: ReasoningEffort | None = None  # passed to the template, as vLLM does
    include_reasoning: bool = True  # vLLM's: false leaves the thinking out of the answer

    def template_variables(self) -> dict[str, Any] | None:
        return template_kwargs(self.chat_template_kwargs, self.reasoning_effort)
