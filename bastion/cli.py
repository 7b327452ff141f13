"""The `bastion` command: serve, generate, demo-model and bench."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable

from bastion import __version__
from bastion.args.aliases import AliasHelpFormatter
from bastion.args.engine import add_engine_args, engine_kwargs


def _serve(args: argparse.Namespace) -> int:
    from bastion.args.serve import serve_config

    config = serve_config(args)
    if config.parallel.headless:
        from bastion.launch.multinode.headless import HeadlessLauncher
        return HeadlessLauncher(config).run()
    if config.supervisor is not None:
        from bastion.launch.supervisor.supervisor import Supervisor
        return Supervisor(config).run()
    from bastion.launch.launcher import Launcher
    return Launcher(config).run()


def _generate(args: argparse.Namespace) -> int:
    from bastion.engine.llm import LLM
    from bastion.sampling_params import SamplingParams

    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, min_p=args.min_p, seed=args.sample_seed,
                            max_tokens=args.max_tokens, ignore_eos=args.ignore_eos)
    llm = LLM(args.model, **engine_kwargs(args))
    if args.chat:
        outputs = llm.chat([{"role": "user", "content": args.prompt}], params)
    else:
        outputs = llm.generate(args.prompt, params)
    for completion in outputs[0].outputs:
        print(completion.text if args.chat else args.prompt + completion.text)
        if args.n > 1:
            print("---")
    return 0


def _demo_model(args: argparse.Namespace) -> int:
    from bastion.model.demo import write_demo_model

    path = write_demo_model(args.dir, overwrite=args.force)
    print(f"demo model written to {path}")
    return 0


# `bastion bench NAME`: (module with its flags' adder, the adder, "module:runner" imported only
# when the bench runs, whether it takes the engine flags, its help)
BENCHES = {
    "throughput": ("bastion.bench.throughput.run", "add_throughput_args",
                   "bastion.bench.throughput.run:run_throughput_bench", True,
                   "offline engine throughput vs transformers"),
    "serve": ("bastion.bench.serve.run", "add_serve_bench_args", "bastion.bench.serve.run:run_serve_bench", True,
              "load a server over the OpenAI API (optionally vs offline, or beside another server)"),
    "latency": ("bastion.bench.latency.args", "add_latency_args", "bastion.bench.latency.run:run_latency_bench",
                True, "one request at a time: prefill tok/s by prompt length, inter-token latency by "
                "output length, side by side with another bastion configuration or server (e.g. llama-server)"),
    "failover": ("bastion.bench.failover", "add_failover_bench_args",
                 "bastion.bench.failover:run_failover_bench", False,
                 "take a supervised rank down under load: detection, recovery and errors on the healthy ranks"),
    "structured": ("bastion.bench.structured.run", "add_structured_bench_args",
                   "bastion.bench.structured.run:run_structured_bench", True,
                   "structured outputs: grammar compile time over a corpus of real-world JSON schemas; "
                   "output tokens/s with and without a schema"),
    "quantization": ("bastion.bench.quality.args", "add_quantization_bench_args",
                     "bastion.bench.quality.run:run_quantization_bench", False,
                     "accuracy cost of int8/int4 weights: perplexity and greedy agreement against bf16 "
                     "on a fixed public-domain text"),
}


def _run_bench(runner: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        module, name = runner.split(":")
        return getattr(importlib.import_module(module), name)(args)
    return run


def _add_benches(sub) -> None:
    bench_sub = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    for name, (module, adder, runner, engine_flags, text) in BENCHES.items():
        parser = bench_sub.add_parser(name, help=text, formatter_class=AliasHelpFormatter)
        getattr(importlib.import_module(module), adder)(parser)
        if engine_flags:
            add_engine_args(parser)
        parser.set_defaults(func=_run_bench(runner))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bastion", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bastion {__version__}")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"], help="logging level")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a model over the OpenAI API (and SGLang's /generate)",
                           formatter_class=AliasHelpFormatter)
    from bastion.args.serve import add_serve_args
    add_serve_args(serve)
    serve.set_defaults(func=_serve)

    gen = sub.add_parser("generate", help="complete one prompt offline and print it",
                         formatter_class=AliasHelpFormatter)
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--model", default=None, help="local model folder or GGUF file (default: the demo model)")
    gen.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate")
    gen.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    gen.add_argument("--top-p", type=float, default=0.95)
    gen.add_argument("--top-k", type=int, default=-1)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--n", type=int, default=1, help="completions to generate")
    gen.add_argument("--sample-seed", type=int, default=None, help="per-request sampling seed")
    gen.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-text")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    add_engine_args(gen)
    gen.set_defaults(func=_generate)

    demo = sub.add_parser("demo-model", help="write the small trained demo model to a folder")
    demo.add_argument("dir", help="destination folder")
    demo.add_argument("--force", action="store_true", help="overwrite a model already there")
    demo.set_defaults(func=_demo_model)

    _add_benches(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"bastion {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
