"""The `bastion` command: serve, generate, demo-model and bench."""
from __future__ import annotations

import argparse
import logging
import sys

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


def _bench(args: argparse.Namespace) -> int:
    from bastion.bench.throughput import run_throughput_bench

    return run_throughput_bench(args)


def _bench_serve(args: argparse.Namespace) -> int:
    from bastion.bench.serve import run_serve_bench

    return run_serve_bench(args)


def _bench_structured(args: argparse.Namespace) -> int:
    from bastion.bench.structured.run import run_structured_bench

    return run_structured_bench(args)


def _bench_latency(args: argparse.Namespace) -> int:
    from bastion.bench.latency.run import run_latency_bench

    return run_latency_bench(args)


def _bench_quantization(args: argparse.Namespace) -> int:
    from bastion.bench.quality.run import run_quantization_bench

    return run_quantization_bench(args)


def _bench_failover(args: argparse.Namespace) -> int:
    from bastion.bench.failover import run_failover_bench

    return run_failover_bench(args)


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

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    from bastion.bench.throughput import add_throughput_args
    tp = bench_sub.add_parser("throughput", help="offline engine throughput vs transformers",
                              formatter_class=AliasHelpFormatter)
    add_throughput_args(tp)
    add_engine_args(tp)
    tp.set_defaults(func=_bench)
    from bastion.bench.serve import add_serve_bench_args
    sv = bench_sub.add_parser("serve", help="load a server over the OpenAI API (optionally vs offline)",
                              formatter_class=AliasHelpFormatter)
    add_serve_bench_args(sv)
    add_engine_args(sv)
    sv.set_defaults(func=_bench_serve)
    from bastion.bench.latency.args import add_latency_args
    lt = bench_sub.add_parser("latency", help="one request at a time: prefill tok/s by prompt length, "
                              "inter-token latency by output length, side by side with another bastion "
                              "configuration or server (e.g. llama-server)", formatter_class=AliasHelpFormatter)
    add_latency_args(lt)
    add_engine_args(lt)
    lt.set_defaults(func=_bench_latency)
    from bastion.bench.failover import add_failover_bench_args
    fo = bench_sub.add_parser("failover", help="take a supervised rank down under load: detection, "
                              "recovery and errors on the healthy ranks")
    add_failover_bench_args(fo)
    fo.set_defaults(func=_bench_failover)
    from bastion.bench.structured.run import add_structured_bench_args
    st = bench_sub.add_parser("structured", help="structured outputs: grammar compile time over a corpus "
                              "of real-world JSON schemas; output tokens/s with and without a schema",
                              formatter_class=AliasHelpFormatter)
    add_structured_bench_args(st)
    add_engine_args(st)
    st.set_defaults(func=_bench_structured)
    from bastion.bench.quality.run import add_quantization_bench_args
    qb = bench_sub.add_parser("quantization", help="accuracy cost of int8/int4 weights: perplexity "
                              "and greedy agreement against bf16 on a fixed public-domain text")
    add_quantization_bench_args(qb)
    qb.set_defaults(func=_bench_quantization)
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
