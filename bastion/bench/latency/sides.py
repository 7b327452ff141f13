"""The servers `bench latency` compares ("sides"): bastion started on MODEL with the engine flags
(or a running server at --url), a second bastion with --compare-flags, a running server at
--compare-url. Each side knows the bytes one of its decode steps reads, where that is known."""
from __future__ import annotations

import argparse
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bastion.bench.harness import bench_server, engine_flags
from bastion.bench.latency.args import compare_flag_list
from bastion.bench.serve_load import LoadSettings, client_settings

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
QUANTIZATION_FLAGS = ("--quantization", "-q")


@dataclass
class Side:
    """One server measured: its name in the report, how it came to be, what a token reads."""

    name: str
    kind: str  # "bastion" (started by the bench) or "url" (already running)
    extra: list[str]  # a started side's `bastion serve` flags after the bench's engine flags
    weight_bytes: int | None
    weight_source: str
    url: str = ""
    settings: LoadSettings | None = None
    results: dict = field(default_factory=dict)  # "prefill" and "decode" summaries by length (measure.py)

    def describe(self) -> dict:
        """The side and its results, for the JSON."""
        return {"name": self.name, "kind": self.kind, "url": self.url, "extra_flags": self.extra,
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
    return sides


def start_sides(sides: list[Side], model: str | None, args: argparse.Namespace, stack: ExitStack) -> None:
    """Start the bastion sides (all up at once: their requests alternate), then reach every side
    (the client flags are --url's; --compare-url is reached without a key or client certificate)."""
    for side in sides:
        if side.kind == "bastion":
            side.url = stack.enter_context(bench_server(model, args, side.extra))
            print(f"{side.name}: started at {side.url}")
    for i, side in enumerate(sides):
        client = args if side.kind == "bastion" or i == 0 else _plain_client(args)
        try:
            side.settings = client_settings(side.url, client, concurrency=1, timeout=args.request_timeout)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"{side.name} ({side.url}): cannot reach it: {type(exc).__name__}: {exc}") from None


def _plain_client(args: argparse.Namespace) -> argparse.Namespace:
    """--compare-url's client: no key, no TLS client certificate (those flags are --url's)."""
    return argparse.Namespace(**{**vars(args), "api_key": None, "served_model": None,
                                 "ssl_client_certfile": None, "ssl_client_keyfile": None})
