"""The flags of `bastion bench serve` (the engine flags are added by the caller: they go to the
servers it starts)."""
from __future__ import annotations

import argparse

from bastion.bench.load import add_client_args
from bastion.bench.peer.args import add_peer_model_args
from bastion.bench.pairs import add_pair_args

COMPARE_MODES = ("compare_offline", "compare_internal", "compare_ray", "compare_security",
                 "compare_url", "compare_disaggregated", "peer_llama_server")


def concurrency_list(text: str) -> list[int]:
    """`1,16,64` -> [1, 16, 64]: positive request counts, each once, in the order given."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected request counts separated by commas, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--concurrency must be at least 1, got {text!r}")
    return list(dict.fromkeys(values))


def add_serve_bench_args(parser: argparse.ArgumentParser) -> None:
    add_client_args(parser)
    parser.add_argument("--concurrency", type=concurrency_list, default=[64], metavar="C[,C...]",
                        help="requests in flight at once; several (1,16,64) run the comparison once per "
                             "concurrency (default 64)")
    parser.add_argument("--request-rate", type=float, default=None,
                        help="Poisson arrivals per second instead of a closed loop (still capped by --concurrency)")
    parser.add_argument("--workload", choices=["mixed", "shared-prefix"], default="mixed",
                        help="mixed: prompts 32-512 and outputs 16-256 tokens; shared-prefix: a 384-token "
                             "prefix, 32 own tokens, 64 new tokens")
    parser.add_argument("--num-requests", type=int, default=None, help="default 128 (mixed) / 64 (shared-prefix)")
    parser.add_argument("--max-tokens", type=int, default=None, help="every request generates exactly this many tokens")
    parser.add_argument("--workload-seed", type=int, default=0,
                        help="seed of the workload; pair i of a comparison draws its requests with seed + i")
    modes = parser.add_argument_group("what to compare (one of them, or --url alone)")
    modes.add_argument("--compare-offline", action="store_true",
                       help="start a server on --model and compare it with the same requests through an "
                            "in-process engine")
    modes.add_argument("--compare-internal", action="store_true",
                       help="start three servers on --model: internal ipc, TCP with CurveZMQ, plain TCP")
    modes.add_argument("--compare-disaggregated", action="store_true",
                       help="start a colocated (-dp --ranks) and a disaggregated (--prefill-ranks 1) server; "
                            "TTFT, TPOT, inter-token latency, tok/s, and the KV channel's GB/s against an "
                            "in-process copy (docs/disaggregation.md)")
    modes.add_argument("--compare-ray", action="store_true",
                       help="start two servers on --model with --ranks ranks each: local processes and Ray "
                            "actors (--data-parallel-backend ray)")
    modes.add_argument("--compare-security", action="store_true",
                       help="start two servers on --model (or --synthetic-110m): everything off (HTTP, no "
                            "auth, no limits, no audit, internal ipc) and everything on (TLS with a "
                            "certificate made for the run, an API key from a keys file, per-key limits "
                            "that never bind, an audit log, internal TCP with CurveZMQ)")
    modes.add_argument("--compare-url", default=None, metavar="URL",
                       help="start bastion on --model and compare it with the server already running at URL "
                            "(e.g. llama.cpp's llama-server on the same checkpoint, started by hand; "
                            "--peer-llama-server starts it for you the way its users do)")
    modes.add_argument("--peer-llama-server", default=None, metavar="PATH",
                       help="llama.cpp's llama-server binary: start bastion on --model, and llama-server on "
                            "--peer-model once per concurrency with -np = the concurrency, -c = -np x the "
                            "longest request's context, -t/-tb = the threads bastion gets (llama.cpp's own "
                            "advice); compare the two")
    add_peer_model_args(parser)
    add_pair_args(parser, what="runs of the workload")
    parser.add_argument("--repeats", dest="pairs", type=int, help=argparse.SUPPRESS)  # the old name of --pairs
    parser.add_argument("--time-limit", type=float, default=14400.0, metavar="SECONDS",
                        help="stop a comparison after the pair under way once this much time has passed "
                             "(default 14400)")
    parser.add_argument("--ranks", type=int, default=2,
                        help="data-parallel ranks for --compare-ray and --compare-disaggregated (default 2)")
    parser.add_argument("--ray-address", default=None,
                        help="the Ray cluster for --compare-ray (default $RAY_ADDRESS, else a local one)")
    parser.add_argument("--model", default=None,
                        help="model folder (or GGUF file) of the servers the bench starts (default: the demo model)")
    parser.add_argument("--synthetic-110m", action="store_true",
                        help="instead of --model: a random ~110M Llama (with a word tokenizer)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")


def chosen_mode(args: argparse.Namespace) -> str | None:
    """The comparison the flags ask for (None: --url alone); ValueError unless exactly one thing
    is asked."""
    chosen = [mode for mode in COMPARE_MODES if getattr(args, mode)]
    if len(chosen) + bool(args.url) != 1:
        raise ValueError("give one of --url URL (a running server), --compare-offline, --compare-internal, "
                         "--compare-ray, --compare-security, --compare-disaggregated, --compare-url URL or "
                         "--peer-llama-server PATH")
    return chosen[0] if chosen else None
