"""`bastion bench structured`: grammar compile time over the corpus, then free against
constrained output tokens/s on one server (started here on --model, or --url), in one run;
prints both tables and writes them, with the machine, as JSON."""
from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

from bastion.bench.harness import bench_server, engine_flags
from bastion.bench.provenance import run_record, say_machine
from bastion.bench.load import add_client_args
from bastion.bench.structured.compile_time import measure_compile, print_compile
from bastion.bench.structured.corpus import load_corpus, select, serving_schemas
from bastion.bench.structured.serving import CONSTRAINT_FIELDS, compare_serving, print_serving


def add_structured_bench_args(parser: argparse.ArgumentParser) -> None:
    add_client_args(parser)
    parser.set_defaults(request_rate=None)
    parser.add_argument("--model", default=None,
                        help="model folder: the server this bench starts (without --url), and the "
                             "vocabulary grammars compile against (default: the demo model)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default 16)")
    parser.add_argument("--num-requests", type=int, default=32,
                        help="requests per side in each round (default 32)")
    parser.add_argument("--rounds", "--pairs", type=int, default=6,
                        help="rounds (pairs of runs), each running both sides, in ABBA order (free, "
                             "constrained, constrained, free, ...); 6 or more give a 95%% interval of "
                             "the median ratio (default 6)")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="every request's max_tokens, with ignore_eos (default 256)")
    parser.add_argument("--constraint-field", choices=CONSTRAINT_FIELDS, default="structured-outputs",
                        help="how the schema is sent: vLLM's structured_outputs {\"json\": schema} "
                             "(default) or OpenAI's response_format json_schema")
    parser.add_argument("--corpus-limit", type=int, default=None,
                        help="compile only the corpus's first N schemas (default: all)")
    parser.add_argument("--compile-only", action="store_true", help="measure compile time only")
    parser.add_argument("--serving-only", action="store_true", help="measure serving only")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")


def run_structured_bench(args: argparse.Namespace) -> int:
    for name in ("concurrency", "num_requests", "rounds", "max_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.compile_only and args.serving_only:
        raise ValueError("--compile-only and --serving-only exclude each other")
    if args.compile_only and args.url:
        raise ValueError("--url is for the serving half; drop --compile-only or --url")
    model = args.model or _demo_model()
    corpus = load_corpus()
    record = run_record()
    say_machine(record)
    result: dict = {"model": model, "record": record, "machine": record["machine"]}
    if not args.serving_only:
        label = Path(model).name if args.model else "bastion-demo"
        result["compile"] = measure_compile(model, label, select(corpus, args.corpus_limit), args)
        print_compile(result["compile"])
    if not args.compile_only:
        if not args.url:
            result["engine_flags"] = engine_flags(args)
        with nullcontext(None) if args.url else bench_server(model, args) as server:
            url = args.url or server.url
            result["url"] = args.url
            result["command"] = server.command if server else None
            result["serving"] = compare_serving(url, args, serving_schemas(corpus))
        print_serving(result["serving"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if result.get("serving", {}).get("errors", 0) == 0 else 1


def _demo_model() -> str:
    from bastion.model.demo import default_model_path

    return str(default_model_path())
