"""The servers `bench latency` compares ("sides"): bastion started on MODEL with the engine flags
(or a running server at --url), a second bastion with --compare-flags, a running server at
--compare-url, llama.cpp's llama-server started on --peer-model (--peer-llama-server). Each side
knows the bytes one of its decode steps reads, where that is known, and the command line that
started it, where the bench started it."""
from __future__ import annotations

import argparse
import os
import shlex
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bastion.bench.harness import bench_server, engine_flags
from bastion.bench.latency.args import compare_flag_list
from bastion.bench.load import LoadSettings, client_settings
from bastion.bench.peer.llama_server import (llama_server_command, llama_server_version, slot_context,
                                             started_llama_server)
from bastion.bench.provenance import scrub

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
QUANTIZATION_FLAGS = ("--quantization", "-q")


@dataclass
class Side:
    """One server measured: its name in the report, how it came to be, what a token reads."""

    name: str
    kind: str  # "bastion" or "llama.cpp" (started by the bench), or "url" (already running)
    extra: list[str]  # a started side's `bastion serve` flags after the bench's engine flags
    weight_bytes: int | None
    weight_source: str
    url: str = ""
    settings: LoadSettings | None = None
    results: dict = field(default_factory=dict)  # "prefill" and "decode" summaries by length (measure.py)
    command: list[str] = field(default_factory=list)  # the full command line, for a side the bench started
    version: str = ""

    def describe(self) -> dict:
        """The side and its results, for the JSON."""
        return {"name": self.name, "kind": self.kind, "url": self.url, "extra_flags": self.extra,
                "command": scrub(self.command), "version": self.version,
                "weight_bytes": self.weight_bytes, "weight_source": self.weight_source, **self.results}


def weight_file_bytes(model: str) -> int | None:
    """The size of a model's weight files: a file itself (a GGUF), or a folder's weight files."""
    path = Path(model)
    if path.is_file():
        return path.stat().st_size
    files = [f for f in path.glob("*") if f.suffix in WEIGHT_SUFFIXES] if path.is_dir() else []
    return sum(f.stat().st_size for f in files) or None


def plan_sides(args: argparse.Namespace, model: str | None) -> list[Side]:
    """The sides the flags ask for, in the report's order (ratios are against the first)."""
    files = weight_file_bytes(model) if model else None

    def weights(given: int | None, flags: list[str] | None) -> tuple[int | None, str]:
        if given:
            return given, "given"
        if flags is None or not files:  # NOTE: a running server's weights are not ours to guess
            return None, "unknown (give --weight-bytes / --compare-weight-bytes)"
        if any(f in QUANTIZATION_FLAGS or f.startswith("--quantization=") for f in engine_flags(args) + flags):
            return None, "unknown: quantized at load (give --weight-bytes / --compare-weight-bytes)"
        recast = args.dtype != "auto" or any(f.startswith("--dtype") for f in flags)
        return files, "weight files" + (" (as stored: --dtype may change what a step reads)" if recast else "")
    compare_bytes = args.compare_weight_bytes or args.weight_bytes
    if args.url:
        sides = [Side("url", "url", [], *weights(args.weight_bytes, None), url=args.url.rstrip("/"))]
    else:
        sides = [Side("bastion", "bastion", [], *weights(args.weight_bytes, []))]
    if args.compare_flags is not None:
        flags = compare_flag_list(args)
        sides.append(Side("bastion " + args.compare_flags.strip(), "bastion", flags, *weights(compare_bytes, flags)))
    if args.compare_url:
        sides.append(Side("compare-url", "url", [], *weights(compare_bytes, None), url=args.compare_url.rstrip("/")))
    if args.peer_llama_server:
        given = args.compare_weight_bytes
        sides.append(Side("llama.cpp", "llama.cpp", shlex.split(args.peer_flags),
                          given or weight_file_bytes(args.peer_model),
                          "given" if given else "the GGUF file (--peer-model)"))
    return sides


def start_sides(sides: list[Side], model: str | None, args: argparse.Namespace, stack: ExitStack) -> None:
    """Start the bastion sides (all up at once: their requests alternate), then reach every side
    (the client flags are --url's; --compare-url is reached without a key or client certificate)."""
    for side in sides:
        if side.kind == "bastion":
            server = stack.enter_context(bench_server(model, args, side.extra))
        elif side.kind == "llama.cpp":
            side.version = llama_server_version(args.peer_llama_server)
            server = stack.enter_context(started_llama_server(llama_server_command(
                args.peer_llama_server, args.peer_model, 1, slot_context(longest_request(args)),
                args.num_threads or len(os.sched_getaffinity(0)), side.extra)))
        else:
            continue
        side.url, side.command = server.url, server.command
        print(f"{side.name}: started at {side.url}: {' '.join(scrub(side.command))}")
    for i, side in enumerate(sides):
        client = args if side.kind == "bastion" or i == 0 else _plain_client(args)
        try:
            side.settings = client_settings(side.url, client, concurrency=1, timeout=args.request_timeout)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"{side.name} ({side.url}): cannot reach it: {type(exc).__name__}: {exc}") from None


def longest_request(args: argparse.Namespace) -> int:
    """The most tokens one request of the run takes (prompt and output)."""
    return max([n + 1 for n in args.input_len] + [args.decode_input_len + o for o in args.output_len])


def _plain_client(args: argparse.Namespace) -> argparse.Namespace:
    """--compare-url's client: no key, no TLS client certificate (those flags are --url's)."""
    return argparse.Namespace(**{**vars(args), "api_key": None, "served_model": None,
                                 "ssl_client_certfile": None, "ssl_client_keyfile": None})
