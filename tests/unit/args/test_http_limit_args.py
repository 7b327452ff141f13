"""The HTTP limits' flags: defaults, validation naming the flag, and the early head check."""
from __future__ import annotations

import pytest

from bastion.args.serve import serve_config
from bastion.cli import build_parser
from bastion.server.http.protocol import head_problem


def config(*argv: str):
    return serve_config(build_parser().parse_args(["serve", *argv]))


def test_defaults_and_sizes_with_units():
    server = config().server
    assert (server.http_header_timeout, server.max_request_header_bytes, server.max_connections) == \
        (10.0, 32 * 1024, 4096)
    server = config("--max-request-header-bytes", "64KiB", "--http-header-timeout", "2.5",
                    "--max-connections", "10").server
    assert (server.http_header_timeout, server.max_request_header_bytes, server.max_connections) == \
        (2.5, 64 * 1024, 10)


@pytest.mark.parametrize("argv, message", [
    (["--http-header-timeout", "0"], "--http-header-timeout must be positive"),
    (["--max-request-header-bytes", "512"], "--max-request-header-bytes must be at least 1024"),
    (["--max-connections", "0"], "--max-connections must be at least 1"),
])
def test_bad_http_limits_name_their_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        config(*argv)


@pytest.mark.parametrize("buffer, verdict", [
    (b"", None), (b"GE", None), (b"GET / HTTP/1.1\r", None),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"body" * 20000, None),  # only the head counts
    (b"\x16\x03\x01\x02\x00", 400),  # TLS on the plain port
    (b"GET /\x80", 400), (b"G\x00", 400), (b"\x7fabc", 400),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 10000 + b"\r\n", 431),  # whole, in one write
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 40000, 431),  # still arriving
])
def test_head_problem(buffer, verdict):
    assert head_problem(buffer, 32 * 1024) == verdict


def test_max_batched_prompts_defaults_to_max_num_seqs():
    assert config().server.max_batched_prompts == 128
    assert config("--max-num-seqs", "8").server.max_batched_prompts == 8
    assert config("--max-num-seqs", "8", "--max-batched-prompts", "300").server.max_batched_prompts == 300
    with pytest.raises(ValueError, match="--max-batched-prompts must be at least 1"):
        config("--max-batched-prompts", "0")
