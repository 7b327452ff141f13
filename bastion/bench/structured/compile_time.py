"""Grammar compile time over the corpus, cold: each schema compiled once, with no cache, by the
engine's own `GrammarCompiler` (its worker threads, our own schema checks, llguidance's
`LLMatcher`, the time and size bounds of the engine flags) against the model's vocabulary; and
the first token mask after it (llguidance builds parts of its lexer lazily, on the first mask).

A schema that does not compile is counted with its error; percentiles are over those that did.
The time is the caller's: submit to result, the hop to a worker thread included.
"""
from __future__ import annotations

import argparse
import time
from importlib.metadata import version
from statistics import mean

from bastion.bench.gaps import percentiles
from bastion.bench.structured.corpus import CorpusSchema
from bastion.structured.compiler import GrammarCompiler
from bastion.structured.spec import GrammarError, StructuredOutputs

SLOWEST_SHOWN = 5


def make_grammar_tokenizer(model: str):
    """llguidance's tokenizer for the checkpoint in `model` (logits width, the model's EOS ids),
    as the engine makes it; and the seconds it took."""
    from bastion.model.arch import read_arch_config
    from bastion.model.tokenizer import load_tokenizer
    from bastion.structured.tokenizer import grammar_tokenizer

    started = time.perf_counter()
    arch = read_arch_config(model)
    tok = grammar_tokenizer(load_tokenizer(model), arch.vocab_size, list(arch.eos_token_ids))
    return tok, arch.vocab_size, time.perf_counter() - started


def make_compiler(tok, args: argparse.Namespace) -> GrammarCompiler:
    """The engine's compile pool for `tok`, with the bench's engine flags' bounds and no cache."""
    compiler = GrammarCompiler(lambda: tok, timeout=args.structured_output_compile_timeout,
                               max_bytes=args.structured_output_max_bytes, cache_size=0,
                               strict_properties=args.structured_output_strict_properties)
    compiler.tokenizer()
    return compiler


def compile_one(compiler: GrammarCompiler, schema: CorpusSchema) -> dict:
    """One cold compile: milliseconds to a matcher and to its first mask, or the error."""
    started = time.perf_counter()
    try:
        matcher, error = compiler.submit(StructuredOutputs(json=schema.text)).result(), ""
    except GrammarError as exc:
        matcher, error = None, str(exc)
    compiled = time.perf_counter() - started
    row = {"name": schema.name, "category": schema.category, "ok": matcher is not None,
           "compile_ms": round(1000 * compiled, 3)}
    if matcher is None:
        return {**row, "error": " ".join(error.split())[:300]}
    started = time.perf_counter()
    matcher.deep_copy().compute_bitmask()  # NOTE: the compiler's matcher is pristine; use a copy, as the engine does
    return {**row, "first_mask_ms": round(1000 * (time.perf_counter() - started), 3)}


def measure_compile(model: str, label: str, schemas: list[CorpusSchema], args: argparse.Namespace) -> dict:
    """Compile every schema once (after one untimed warm-up compile) and summarize."""
    tok, vocab_size, tok_seconds = make_grammar_tokenizer(model)
    compiler = make_compiler(tok, args)
    compile_one(compiler, CorpusSchema("warm-up", "", "", {"type": "object"}))
    rows = [compile_one(compiler, s) for s in schemas]
    ok = [r for r in rows if r["ok"]]
    slowest = sorted(ok, key=lambda r: -r["compile_ms"])[:SLOWEST_SHOWN]
    return {"backend": f"bastion GrammarCompiler, llguidance {version('llguidance')}", "tokenizer": label,
            "vocab_size": vocab_size, "tokenizer_build_ms": round(1000 * tok_seconds, 1),
            "compile_timeout_s": compiler.timeout, "schemas": len(rows),
            "compiled": len(ok), "failed": len(rows) - len(ok),
            "compile_ms": _stats([r["compile_ms"] for r in ok]),
            "first_mask_ms": _stats([r["first_mask_ms"] for r in ok]),
            "slowest": [{"name": r["name"], "compile_ms": r["compile_ms"]} for r in slowest],
            "failures": [{"name": r["name"], "category": r["category"], "error": r["error"]}
                         for r in rows if not r["ok"]],
            "per_schema": rows}


def _stats(ms: list[float]) -> dict:
    """p50/p90/p99 (nearest rank), max and mean of milliseconds."""
    if not ms:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    return {**percentiles([m / 1000 for m in ms]), "max": round(max(ms), 2), "mean": round(mean(ms), 2)}


def print_compile(result: dict) -> None:
    """The compile half as a short table."""
    c, m = result["compile_ms"], result["first_mask_ms"]
    print(f"\ngrammar compile, cold, {result['schemas']} schemas, {result['backend']}, "
          f"vocabulary of {result['tokenizer']} ({result['vocab_size']} tokens, built in "
          f"{result['tokenizer_build_ms']} ms):")
    print(f"{'':12} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9} {'mean':>9}  (ms)")
    for name, s in (("compile", c), ("first mask", m)):
        print(f"{name:12} {s['p50']:>9.2f} {s['p90']:>9.2f} {s['p99']:>9.2f} {s['max']:>9.2f} {s['mean']:>9.2f}")
    print(f"compiled {result['compiled']}, failed {result['failed']}; slowest: "
          + ", ".join(f"{r['name']} {r['compile_ms']:.2f} ms" for r in result["slowest"]))
    for f in result["failures"]:
        print(f"  failed: {f['name']} ({f['category']}): {f['error']}")
