"""Which parser reads a model's tool calls in `auto` mode, and the parser of each plan.

`--tool-call-parser` names one (vLLM's flag and names); without it the model's chat template
says: the first of these markers found in its text picks the parser.

| marker in the template                     | parser        |
|--------------------------------------------|---------------|
| `<tool_call>`                              | `hermes`      |
| `[TOOL_CALLS]`                             | `mistral`     |
| `<|python_tag|>`, or the `ipython` role    | `llama3_json` |

A template with none of them (one that ignores tools) gets `hermes`: its call is wrapped in
markers no ordinary answer contains, so plain text is never misread as a call (the JSON
parsers would read an answer that happens to be a JSON object as one).

Some tokenizers make `<tool_call>` a special token, which `skip_special_tokens` (the default)
drops from the text: there `hermes` also reads a message that is bare call objects.
"""
from __future__ import annotations

from dataclasses import dataclass

from bastion.server.tools.calls import ToolParser
from bastion.server.tools.constrained import CallArray, NamedCall
from bastion.server.tools.hermes import START, HermesParser
from bastion.server.tools.llama3_json import Llama3JsonParser, WholeMessageCalls
from bastion.server.tools.mistral import MistralParser
from bastion.server.tools.request import ToolPlan

PARSERS = {"hermes": HermesParser, "llama3_json": Llama3JsonParser, "mistral": MistralParser}
FALLBACK = "hermes"
_MARKERS = (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"),
            ("<|python_tag|>", "llama3_json"), ("ipython", "llama3_json"))


def parser_for_template(template: str | dict | None) -> str:
    """The parser a chat template's text calls for (a tokenizer may hold several named
    templates, a dict; all are read)."""
    text = "\n".join(template.values()) if isinstance(template, dict) else (template or "")
    return next((name for marker, name in _MARKERS if marker in text), FALLBACK)


@dataclass(frozen=True)
class AutoParsing:
    """How this server reads `auto` answers: the parser's name, and whether the tokenizer makes
    the hermes marker a special token (dropped from text that skips special tokens)."""

    name: str
    marker_special: bool = False

    @classmethod
    def of(cls, flag: str | None, tokenizer) -> "AutoParsing":
        """From --tool-call-parser (None: the template's) and the tokenizer."""
        special = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
        return cls(flag or parser_for_template(tokenizer.chat_template), START in special)


def parser_of(plan: ToolPlan | None, auto: AutoParsing, skip_special_tokens: bool = True) -> ToolParser | None:
    """A fresh parser for one sequence of a request with this plan (None: plain text)."""
    if plan is None or plan.mode == "none":
        return None
    if plan.mode == "named":
        return NamedCall(plan.name)
    if plan.mode == "required":
        return CallArray("parameters")
    if auto.name == "hermes" and auto.marker_special and skip_special_tokens:
        return WholeMessageCalls(otherwise=HermesParser())
    return PARSERS[auto.name]()
