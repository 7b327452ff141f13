"""Peers' spellings of bastion's flags: how `--help` shows them, and the model folder given two ways.

A flag's first option string is its canonical name (vLLM's where the meaning is the same); the
others are aliases, mostly SGLang's (`--dp`, `--context-length`, `--max-running-requests`...),
listed in docs/serving.md. argparse prints every option string of a flag side by side;
`AliasHelpFormatter` prints the canonical name once and notes the aliases after the help text.

The model folder is bastion's positional argument (vLLM's `vllm serve MODEL`); SGLang names it
`--model-path` (or `--model`). Either works; both at once must name the same folder.
"""
from __future__ import annotations

import argparse
import copy
import textwrap
from pathlib import Path

MODEL_FLAGS = ("--model-path", "--model")  # SGLang's spellings of the positional MODEL


def canonical_names(action: argparse.Action) -> list[str]:
    """The option strings shown for `action`: its first, and the `--no-` form of a boolean flag."""
    if isinstance(action, argparse._HelpAction):  # NOTE: -h, --help: the usual pair, not an alias
        return list(action.option_strings)
    names = action.option_strings[:1]
    if isinstance(action, argparse.BooleanOptionalAction) and names:
        names.append("--no-" + names[0][2:])
    return names


def aliases_of(action: argparse.Action) -> list[str]:
    """Every other spelling of `action`."""
    shown = canonical_names(action)
    return [name for name in action.option_strings if name not in shown]


class AliasHelpFormatter(argparse.HelpFormatter):
    """`--help` with one canonical name per flag and its aliases noted: `(alias: --dp, --dp-size)`.
    Lines wrap at spaces only, so a flag named in a help text is never split at a hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not aliases_of(action):
            return super()._format_action_invocation(action)
        shown = copy.copy(action)
        shown.option_strings = canonical_names(action)
        return super()._format_action_invocation(shown)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        aliases = aliases_of(action)
        if not aliases or text is None or text == argparse.SUPPRESS:
            return text
        return f"{text} (alias: {', '.join(aliases)})"


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The model folder or GGUF file: positional (vLLM), or `--model-path`/`--model` (SGLang)."""
    parser.add_argument("model", nargs="?", default=None,
                        help=f"local model folder or GGUF file (default: the bundled demo model) "
                             f"(alias: {', '.join(MODEL_FLAGS)})")
    parser.add_argument(*MODEL_FLAGS, dest="model_path", default=None, help=argparse.SUPPRESS)


def model_of(args: argparse.Namespace) -> str | None:
    """The model folder given, however it was spelled; None for the demo model. ValueError when
    the positional MODEL and --model-path name different folders."""
    positional, flag = args.model, getattr(args, "model_path", None)
    if positional is None or flag is None:
        return positional if flag is None else flag
    if Path(positional).resolve() != Path(flag).resolve():
        raise ValueError(f"the model folder is given twice and differs: {positional!r} (the positional "
                         f"MODEL) and {flag!r} (--model-path); give it once")
    return positional
