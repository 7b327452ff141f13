"""Limit flags and the key file's waiting cap: bad values stop with a message naming the flag."""
from __future__ import annotations

import pytest

from bastion.cli import main
from bastion.config.security import Limits
from bastion.security.keys import load_key_file


@pytest.mark.parametrize("flag", ["--default-max-waiting-per-principal",
                                  "--default-max-concurrent-per-principal"])
def test_a_bad_default_limit_names_its_flag(flag, capsys):
    assert main(["serve", flag, "0"]) == 2
    assert f"{flag} must be a positive integer, got 0" in capsys.readouterr().err


def test_the_key_file_sets_a_waiting_cap_over_the_defaults(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text('[defaults]\nmax_waiting_requests = 4\n'
                    '[keys.a]\nkey = "a-key-0123456789abcdef"\nmax_waiting_requests = 2\n'
                    '[keys.b]\nkey = "b-key-0123456789abcdef"\n')
    a, b = load_key_file(str(path))
    assert a.limits == Limits(max_waiting_requests=2) and b.limits == Limits(max_waiting_requests=4)


@pytest.mark.parametrize("flag", ["--structured-output-max-waiting-compiles",
                                  "--structured-output-max-waiting-compiles-per-principal"])
def test_a_negative_bound_of_waiting_compiles_names_its_flag(flag, capsys):
    assert main(["serve", flag, "-1"]) == 2
    assert f"{flag} must be non-negative, got -1" in capsys.readouterr().err
