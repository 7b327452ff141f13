"""Served names and their aliases: what `bastion serve` names the model, which spellings a request
may use, and what a caller with a model allowlist may use and see."""
from __future__ import annotations

import pytest

from bastion.args.serve import serve_config, served_names
from bastion.cli import build_parser
from bastion.model.demo import write_demo_model
from bastion.config.server import ServedNames


@pytest.mark.parametrize("given, flag, names, aliases", [
    ("/models/m", None, ("/models/m",), ("m",)),
    ("/models/m/", None, ("/models/m/",), ("m",)),
    ("models/m.gguf", None, ("models/m.gguf",), ("m.gguf",)),
    ("m", None, ("m",), ()),  # a folder in the working directory: its name is the path
    (None, None, ("bastion-demo",), ()),
    ("/models/m", ["a", "b"], ("a", "b"), ()),  # --served-model-name: those names only, as vLLM
])
def test_the_default_name_is_the_argument_as_given_and_its_last_part_an_alias(given, flag, names, aliases):
    assert served_names(given, flag) == (names, aliases)


@pytest.mark.parametrize("flag", ["--model", "--model-path", None])
def test_every_spelling_of_the_model_argument_names_it_as_given(flag, tmp_path):
    folder = str(write_demo_model(tmp_path / "m"))
    argv = ["serve", *([flag] if flag else []), folder]
    server = serve_config(build_parser().parse_args(argv)).server
    assert server.served_model_names == (folder,) and server.model_aliases == ("m",)


def test_an_alias_stands_for_the_first_name_and_other_names_for_nothing():
    served = ServedNames(("/models/m", "extra"), ("m",))
    assert served.resolve("/models/m") == "/models/m" and served.resolve("m") == "/models/m"
    assert served.resolve("extra") == "extra"
    assert served.resolve("M") is None and served.resolve("/models/m/") is None and served.resolve("") is None
    assert ServedNames(("m",), ("m",)).aliases == ()  # never listed twice


@pytest.mark.parametrize("allowlist, may_use, listed", [
    (None, True, ["/models/m"]),
    (["m"], True, ["/models/m"]),
    (["/models/m"], True, ["/models/m"]),
    (["other"], False, []),
])
def test_an_allowlist_naming_either_spelling_allows_the_model(allowlist, may_use, listed):
    served = ServedNames(("/models/m",), ("m",))
    allowed = (lambda name: True) if allowlist is None else allowlist.__contains__
    assert served.allowed("/models/m", allowed) is may_use
    assert served.listed(allowed) == listed


def test_an_explicit_served_name_is_allowed_only_by_itself():
    served = ServedNames(("a", "b"))
    assert served.allowed("a", ["a"].__contains__) and not served.allowed("b", ["a"].__contains__)
    assert served.listed(["b"].__contains__) == ["b"]
