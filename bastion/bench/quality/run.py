"""`bastion bench quantization`: perplexity and greedy agreement of int8/int4 weights against
bf16 on a fixed public-domain English text, with the bytes each streams per token."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bastion.bench.quality.args import VARIANTS
from bastion.bench.quality.measure import VariantRun, prefix_agreement, run_variant
from bastion.bench.quality.text import PASSAGES, PROMPTS, passage_text

logger = logging.getLogger(__name__)

def run_quantization_bench(args: argparse.Namespace) -> int:
    from bastion.model.arch import read_arch_config
    from bastion.model.demo import default_model_path
    from bastion.model.tokenizer import load_tokenizer

    model = str(args.model or default_model_path())
    tokenizer = load_tokenizer(model)
    limit = read_arch_config(model).max_position_embeddings
    passage = tokenizer(passage_text()).input_ids[:limit]  # NOTE: the demo model's 2048 cut it
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    runs: list[VariantRun] = []
    for name in args.variants:
        quantization, head = VARIANTS[name]
        logger.info("measuring %s", name)
        runs.append(run_variant(name, model, args.dtype, quantization, head, passage,
                                prompts, args.max_tokens))
    rows = [_row(run, runs[0]) for run in runs]
    result = {"model": model, "dtype": args.dtype, "passages": list(PASSAGES),
              "passage_tokens": len(passage), "prompts": list(PROMPTS), "max_tokens": args.max_tokens,
              "reference": runs[0].name, "variants": rows}
    print(_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _row(run: VariantRun, ref: VariantRun) -> dict:
    argmax = (run.argmax == ref.argmax).float().mean().item()
    prefixes = [prefix_agreement(g, r) for g, r in zip(run.generations, ref.generations)]
    tokens = [sum(a == b for a, b in zip(g, r)) / len(r) for g, r in zip(run.generations, ref.generations)]
    return {"name": run.name, "quantization": run.quantization,
            "weight_bytes_per_token": run.weight_bytes, "load_seconds": round(run.load_seconds, 2),
            "perplexity": round(run.perplexity, 4),
            "perplexity_change": round(run.perplexity / ref.perplexity - 1, 4),
            "argmax_agreement": round(argmax, 4),
            "generation_prefix_agreement": round(sum(prefixes) / len(prefixes), 4),
            "generation_token_agreement": round(sum(tokens) / len(tokens), 4),
            "generation_identical": sum(p == 1.0 for p in prefixes)}


def _table(result: dict) -> str:
    head = (f"{result['model']}: {result['passage_tokens']} tokens teacher-forced, "
            f"{len(result['prompts'])} prompts x {result['max_tokens']} greedy tokens; "
            f"reference {result['reference']}")
    cols = f"{'variant':<16}{'MiB/token':>10}{'ppl':>9}{'Δppl':>8}{'argmax=':>9}{'gen prefix':>11}{'gen same':>9}"
    lines = [head, cols]
    for r in result["variants"]:
        lines.append(f"{r['name']:<16}{r['weight_bytes_per_token'] / 2**20:>10.1f}{r['perplexity']:>9.3f}"
                     f"{r['perplexity_change']:>+8.1%}{r['argmax_agreement']:>9.1%}"
                     f"{r['generation_prefix_agreement']:>11.1%}"
                     f"{r['generation_identical']:>5}/{len(result['prompts'])}")
    return "\n".join(lines)
