"""SGLang's spellings of bastion's flags: each alias builds exactly the config its canonical flag
builds (and not the default one), the model folder may be given either way but not two different
ones, and `--help` shows each flag once with its aliases noted."""
from __future__ import annotations

import re

import pytest
from certs import CertAuthority

from bastion.args.serve import serve_config
from bastion.cli import build_parser, main
from bastion.model.demo import DEMO_MODEL_DIR, write_demo_model


def config(*argv: str):
    return serve_config(build_parser().parse_args(["serve", *argv]))


@pytest.mark.parametrize("alias, canonical", [
    (["--dp", "2"], ["--data-parallel-size", "2"]),
    (["--dp-size", "2"], ["--data-parallel-size", "2"]),
    (["--context-length", "64"], ["--max-model-len", "64"]),
    (["--max-running-requests", "8"], ["--max-num-seqs", "8"]),
    (["--page-size", "32"], ["--block-size", "32"]),
    (["--random-seed", "7"], ["--seed", "7"]),
    (["--disable-radix-cache"], ["--no-enable-prefix-caching"]),
    (["--dtype", "half"], ["--dtype", "float16"]),
    (["--dtype", "float"], ["--dtype", "float32"]),
])
def test_an_alias_builds_the_config_of_its_canonical_flag(alias, canonical):
    assert config(*alias) == config(*canonical)
    assert config(*alias) != config(), "the flag changed nothing; the test would prove nothing"


def test_the_tls_file_aliases_build_the_same_tls_config(tmp_path):
    pair = CertAuthority(tmp_path).issue("server")
    aliased = config("--ssl-key-file", str(pair.key), "--ssl-cert-file", str(pair.cert))
    assert aliased == config("--ssl-keyfile", str(pair.key), "--ssl-certfile", str(pair.cert))
    assert aliased.security.tls.enabled


@pytest.mark.parametrize("flag", ["--model-path", "--model"])
def test_the_model_folder_by_flag_is_the_positional_model(flag, tmp_path):
    folder = write_demo_model(tmp_path / "m")
    by_flag = config(flag, str(folder))
    assert by_flag == config(str(folder))
    assert by_flag.model == str(folder) and by_flag.server.served_model_names == (str(folder),)
    assert by_flag.server.model_aliases == ("m",)
    assert by_flag != config(), "the demo model's default config: the flag was ignored"


def test_the_model_folder_given_both_ways_must_be_the_same(tmp_path, monkeypatch, capsys):
    folder = write_demo_model(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    assert config("m", "--model-path", str(folder)) == config("m")  # one folder, spelled two ways
    assert main(["serve", str(DEMO_MODEL_DIR), "--model-path", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "the model folder is given twice and differs" in err and "--model-path" in err


def test_the_sglang_style_launch_line_parses(tmp_path):
    folder = write_demo_model(tmp_path / "m")
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys.ops]\nkey = "sglang-style-key-0123456789"\n')
    pair = CertAuthority(tmp_path).issue("server")
    line = ["--model-path", str(folder), "--host", "127.0.0.1", "--port", "30000", "--api-key-file", str(keys),
            "--log-level", "warning", "--dp", "2"]
    plain = config(*line)
    assert (plain.model, plain.server.port, plain.parallel.data_parallel_size) == (str(folder), 30000, 2)
    assert plain.server.log_level == "warning" and plain.security.api_key_file == str(keys)
    tls = config(*line, "--ssl-key-file", str(pair.key), "--ssl-cert-file", str(pair.cert))
    assert (tls.security.tls.keyfile, tls.security.tls.certfile) == (str(pair.key), str(pair.cert))


def test_help_shows_each_flag_once_with_its_aliases():
    text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    assert re.search(r"^  --data-parallel-size DATA_PARALLEL_SIZE$", text, re.M), text
    assert "(alias: -dp, --dp, --dp-size)" in " ".join(text.split())
    for alias in ("--dp-size", "--context-length", "--max-running-requests", "--ssl-key-file", "--model-path"):
        invocations = re.findall(rf"^  {alias}\b", text, re.M)
        assert not invocations, f"{alias} has its own help entry"
        assert f"{alias}" in text, f"{alias} is not noted"
    assert "(--disable-radix-cache: alias of --no-enable-prefix-caching)" in " ".join(text.split())


@pytest.mark.parametrize("argv", [["--grammar-backend", "xgrammar"],
                                  ["--structured-outputs-config.backend", "outlines"],
                                  ["--guided-decoding-backend", "lm-format-enforcer"],
                                  ["--grammar-backend", "llguidance"]])
def test_a_peers_grammar_backend_is_accepted_and_llguidance_serves_it(argv, caplog):
    """SGLang's and vLLM's command lines name their grammar backend; bastion takes the flag, says
    that llguidance enforces the constraints, and builds the same config as without it."""
    with caplog.at_level("WARNING", logger="bastion.args.engine"):
        assert config(*argv) == config()
    named = argv[1] != "llguidance"
    assert ("enforces structured outputs with llguidance" in caplog.text) == named


def test_an_unknown_grammar_backend_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--grammar-backend", "regex-magic"])
    assert exit_info.value.code == 2
    assert "--grammar-backend" in capsys.readouterr().err


@pytest.mark.parametrize("argv, strict", [([], True),
                                          (["--no-structured-output-strict-properties"], False),
                                          (["--structured-outputs-config.disable_additional_properties", "false"], False),
                                          (["--structured-outputs-config.disable_additional_properties", "true"], True),
                                          (["--structured-outputs-config.disable_additional_properties"], True)])
def test_vllms_disable_additional_properties_is_the_strict_properties_flag(argv, strict):
    """vLLM's `disable_additional_properties` (true: only the properties a schema names) is
    `--structured-output-strict-properties`; the engines and the API servers' checks both read it."""
    built = config(*argv)
    assert built.engine.structured.structured_output_strict_properties is strict
    assert built.server.structured == built.engine.structured


def test_a_bad_disable_additional_properties_value_is_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--structured-outputs-config.disable_additional_properties", "maybe"])
    assert "expected true or false" in capsys.readouterr().err
