"""`--reasoning-parser`: vLLM's names and SGLang's spelling, auto by default, others refused."""
from __future__ import annotations

import pytest

from bastion.args.serve import serve_config
from bastion.cli import build_parser
from bastion.config.server import ServerConfig


def parser_of(*argv: str) -> str:
    return serve_config(build_parser().parse_args(["serve", *argv])).server.reasoning_parser


def test_names_and_spellings():
    assert parser_of() == "auto"
    assert parser_of("--reasoning-parser", "deepseek-r1") == parser_of("--reasoning-parser", "deepseek_r1") == "deepseek_r1"
    assert parser_of("--reasoning-parser", "qwen3") == "qwen3"
    assert parser_of("--reasoning-parser", "none") == "none"


def test_unknown_names_are_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--reasoning-parser", "granite"])
    with pytest.raises(ValueError, match="--reasoning-parser"):
        ServerConfig(served_model_names=("m",), reasoning_parser="granite")
