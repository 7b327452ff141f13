"""The flags of `bastion bench latency` (vLLM's `bench latency` names where they exist) and
their checks: a user's mistake is a ValueError naming the flag (the command exits 2)."""
from __future__ import annotations

import argparse
import shlex

from bastion.bench.load import add_client_args
from bastion.bench.peer.args import add_peer_model_args
from bastion.config.engine import parse_bytes

MAX_LEN = 1 << 20  # a bound on any one length, far above any context


def length_list(text: str) -> list[int]:
    """`128,512` -> [128, 512]: positive token counts, each once, in the order given."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token counts separated by commas, got {text!r}") from None
    if any(not 1 <= v <= MAX_LEN for v in values):
        raise argparse.ArgumentTypeError(f"each length must be 1..{MAX_LEN}, got {text!r}")
    return list(dict.fromkeys(values))


def add_latency_args(parser: argparse.ArgumentParser) -> None:
    """Everything but the engine flags (the caller adds those: they go to the servers it starts)."""
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="model folder or file to start `bastion serve` on (default: the demo "
                             "model; not with --url)")
    add_client_args(parser)  # NOTE: --url, --api-key, TLS, --served-model: apply to --url's server
    parser.add_argument("--input-len", type=length_list, default=[128, 512], metavar="N[,N...]",
                        help="prompt lengths whose prefill is timed: prompts of exactly N random token ids, "
                             "max_tokens 1 (default 128,512)")
    parser.add_argument("--output-len", type=length_list, default=[64, 256], metavar="N[,N...]",
                        help="output lengths whose decode is timed: exactly N tokens (ignore_eos) after a "
                             "--decode-input-len prompt (default 64,256)")
    parser.add_argument("--decode-input-len", type=int, default=16,
                        help="prompt length of the decode requests (default 16)")
    parser.add_argument("--num-iters", type=int, default=8,
                        help="timed requests per length and side, each iteration one pair of requests in "
                             "ABBA order (default 8; 6 or more give a 95%% interval of the median ratio)")
    parser.add_argument("--num-iters-warmup", type=int, default=1,
                        help="untimed requests per length and side before them (default 1)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="requests at once: only 1 is supported (one request at a time, as an "
                             "interactive user); others are refused")
    parser.add_argument("--compare-url", default=None, metavar="URL",
                        help="also measure a running server at URL, e.g. llama.cpp's llama-server "
                             "(its requests alternate with the others'); ratios are against the first side")
    parser.add_argument("--compare-flags", default=None, metavar="'FLAGS'",
                        help="also start a second `bastion serve MODEL` with the engine flags plus these "
                             "(later flags win); write it with '=': --compare-flags=--enforce-eager, "
                             "--compare-flags='--quantization int8'")
    parser.add_argument("--peer-llama-server", default=None, metavar="PATH",
                        help="also start llama.cpp's llama-server (this binary) on --peer-model, as its users "
                             "do for one stream: -np 1, -c the longest request's context, -t/-tb the threads "
                             "bastion gets, on loopback; its requests alternate with the others'")
    add_peer_model_args(parser)
    parser.add_argument("--weight-bytes", type=parse_bytes, default=None, metavar="SIZE",
                        help="bytes one decode step reads on the first side (default: the size of "
                             "MODEL's weight files; needed with --url), e.g. 269MB")
    parser.add_argument("--compare-weight-bytes", type=parse_bytes, default=None, metavar="SIZE",
                        help="the same for the compared sides (default: --weight-bytes, else MODEL's "
                             "weight files)")
    parser.add_argument("--request-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="a request whose server sends nothing for this long fails the run (default 120)")
    parser.add_argument("--time-limit", type=float, default=3600.0, metavar="SECONDS",
                        help="the measuring stops with an error after this long (default 3600)")
    parser.add_argument("--output-json", "--json", dest="output_json", default=None, metavar="PATH",
                        help="write the results as JSON")


def check_latency_args(args: argparse.Namespace) -> None:
    """Refuse what the command cannot do, naming the flag."""
    if args.batch_size != 1:
        raise ValueError(f"--batch-size {args.batch_size}: only 1 is supported (bench latency sends one "
                         f"request at a time; for batches use `bastion bench serve --concurrency N`)")
    for name in ("num_iters", "decode_input_len"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.num_iters_warmup < 0:
        raise ValueError(f"--num-iters-warmup must be at least 0, got {args.num_iters_warmup}")
    for name in ("request_timeout", "time_limit"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.url and args.model:
        raise ValueError("give MODEL (a server is started on it) or --url URL (a running server), not both")
    if args.compare_flags is not None:
        if args.url:
            raise ValueError("--compare-flags starts bastion on MODEL twice; give MODEL, not --url")
        compare_flag_list(args)
    if args.peer_llama_server:
        from bastion.bench.peer.llama_server import check_peer_files
        check_peer_files(args.peer_llama_server, args.peer_model)
    elif args.peer_model:
        raise ValueError("--peer-model goes with --peer-llama-server PATH")
    if args.url and args.compare_url and args.url.rstrip("/") == args.compare_url.rstrip("/"):
        raise ValueError("--url and --compare-url name the same server")


def compare_flag_list(args: argparse.Namespace) -> list[str]:
    """--compare-flags as arguments (a ValueError if it does not split or is empty)."""
    try:
        flags = shlex.split(args.compare_flags)
    except ValueError as exc:
        raise ValueError(f"--compare-flags {args.compare_flags!r}: {exc}") from None
    if not flags:
        raise ValueError("--compare-flags is empty: give the flags the second server adds, e.g. '--enforce-eager'")
    return flags
