"""Grammar compile time over the corpus, cold: each schema compiled once, no cache, against the
model's own vocabulary, the way the engine compiles a request's constraint
(`StructuredOutputs(json=...).grammar_text()`, then llguidance's `LLMatcher`), and the first
token mask after it (llguidance builds parts of its lexer lazily, on the first mask).

A schema that does not compile is counted with its error; percentiles are over those that did.
"""
from __future__ import annotations

import time
from importlib.metadata import version
from statistics import mean

from bastion.bench.serve_load import percentiles
from bastion.bench.structured.corpus import CorpusSchema
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


def compile_one(tok, schema: CorpusSchema) -> dict:
    """One cold compile: seconds to a matcher, seconds to its first mask, or the error."""
    from llguidance import LLMatcher

    started = time.perf_counter()
    try:
        matcher = LLMatcher(tok, StructuredOutputs(json=schema.text).grammar_text())
        error = matcher.get_error() if matcher.is_error() else ""
    except GrammarError as exc:
        error = str(exc)
    compiled = time.perf_counter() - started
    row = {"name": schema.name, "category": schema.category, "ok": not error,
           "compile_ms": round(1000 * compiled, 3)}
    if error:
        return {**row, "error": " ".join(error.split())[:300]}
    started = time.perf_counter()
    matcher.compute_bitmask()
    return {**row, "first_mask_ms": round(1000 * (time.perf_counter() - started), 3)}


def measure_compile(model: str, label: str, schemas: list[CorpusSchema]) -> dict:
    """Compile every schema once (after one untimed warm-up compile) and summarize."""
    from llguidance import LLMatcher

    tok, vocab_size, tok_seconds = make_grammar_tokenizer(model)
    LLMatcher(tok, StructuredOutputs(json='{"type": "object"}').grammar_text()).compute_bitmask()
    rows = [compile_one(tok, s) for s in schemas]
    ok = [r for r in rows if r["ok"]]
    slowest = sorted(ok, key=lambda r: -r["compile_ms"])[:SLOWEST_SHOWN]
    return {"backend": f"llguidance {version('llguidance')}", "tokenizer": label, "vocab_size": vocab_size,
            "tokenizer_build_ms": round(1000 * tok_seconds, 1), "schemas": len(rows),
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
