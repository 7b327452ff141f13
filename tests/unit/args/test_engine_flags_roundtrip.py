"""The benches start `bastion serve` with their own engine flags (`harness.engine_flags`): every
value a bench parsed, defaults included, must parse again as `bastion serve` flags, unchanged."""
from __future__ import annotations

from bastion.args.engine import engine_kwargs
from bastion.bench.harness import engine_flags
from bastion.cli import build_parser


def _roundtrip(*bench_flags: str) -> tuple[dict, dict]:
    parser = build_parser()
    bench = parser.parse_args(["bench", "serve", "--compare-offline", *bench_flags])
    serve = parser.parse_args(["serve", "model", *engine_flags(bench)])
    return engine_kwargs(bench), engine_kwargs(serve)


def test_default_engine_flags_parse_again_as_serve_flags():
    bench, serve = _roundtrip()
    assert serve == bench and serve["enforce_eager"] is False and serve["huge_pages"] is True


def test_set_engine_flags_parse_again_as_serve_flags():
    bench, serve = _roundtrip("--enforce-eager", "--no-huge-pages", "--no-enable-prefix-caching", "--dtype", "float32",
                              "--quantization", "int8", "--num-threads", "2", "--no-structured-output-strict-properties")
    assert serve == bench and serve["structured_output_strict_properties"] is False
    assert serve["enforce_eager"] is True and serve["huge_pages"] is False and serve["quantization"] == "int8" and serve["num_threads"] == 2
