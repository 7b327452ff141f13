"""The flags that name llama-server's side, shared by `bench serve` and `bench latency` (each
adds its own `--peer-llama-server`, whose help says how it starts the peer)."""
from __future__ import annotations

import argparse


def add_peer_model_args(parser: argparse.ArgumentParser) -> None:
    """--peer-model GGUF and --peer-flags 'FLAGS', read with --peer-llama-server."""
    parser.add_argument("--peer-model", default=None, metavar="GGUF",
                        help="with --peer-llama-server: the same checkpoint as a GGUF file")
    parser.add_argument("--peer-flags", default="", metavar="'FLAGS'",
                        help="with --peer-llama-server: more llama-server flags (after the bench's own)")
