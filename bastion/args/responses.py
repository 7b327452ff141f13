"""Flags of the response store (`/v1/responses`: `store`, `previous_response_id`, GET, DELETE)."""
from __future__ import annotations

import argparse

from bastion.config.engine import parse_bytes
from bastion.config.responses import ResponseStoreConfig

_DEFAULTS = ResponseStoreConfig()


def add_responses_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "responses API store",
        "responses kept (their input and output items) for GET /v1/responses/{id} and "
        "previous_response_id, in the launcher's memory only (a restart forgets them), readable "
        "only by the principal that created them")
    g.add_argument("--responses-store-ttl-s", type=float, default=_DEFAULTS.ttl_s,
                   help="seconds a stored response is kept (default 3600)")
    g.add_argument("--responses-store-max-count", type=int, default=_DEFAULTS.max_count,
                   help="responses kept at most; past it the oldest goes (default 1000; 0: no "
                        "store, `store` keeps nothing and `previous_response_id` is refused)")
    g.add_argument("--responses-store-max-bytes", type=parse_bytes, default=_DEFAULTS.max_bytes,
                   help="bytes all kept responses may hold; past it the oldest go (default 64MiB)")
    g.add_argument("--responses-store-max-response-bytes", type=parse_bytes,
                   default=_DEFAULTS.max_response_bytes,
                   help="bytes one kept response (its whole conversation and the response) may "
                        "hold; a larger one is answered but not kept (default 8MiB)")


def responses_store_config(args: argparse.Namespace) -> ResponseStoreConfig:
    return ResponseStoreConfig(args.responses_store_ttl_s, args.responses_store_max_count,
                               args.responses_store_max_bytes, args.responses_store_max_response_bytes)
