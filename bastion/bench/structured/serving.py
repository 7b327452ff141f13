"""The serving half: one server, chat prompts with and without a JSON schema, at the same
concurrency, in ABBA pairs (`pairs.py`: free, constrained, constrained, free, ...; a pair is a
"round") so that drift on a shared machine falls on both sides alike. Every run's prompts are
its own (numbered by round and side: one server serves both sides, and a prompt it has seen
would be served from its prefix cache), drawn alike for both sides.

Every request is greedy with `ignore_eos` and a fixed `max_tokens`; the schemas are arrays of
objects with a fixed, large item count (`corpus.SERVING_SCHEMAS`), so a constrained output
cannot reach the grammar's end before `max_tokens` and both sides generate the same number of
tokens. Tokens are counted from each stream's usage all the same, and each side's mean output
length and finish reasons are reported. Before the first round each side serves one untimed
batch, both before either is timed (for the constrained side this compiles its grammars once:
the rounds measure enforcing a compiled grammar; `compile_time.py` measures compiling).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from bastion.bench.load import LoadSettings, measure_serving, streamed_with_counts
from bastion.bench.pairs import PairPlan, describe_ratio, ratio_stats, run_pairs
from bastion.bench.structured.corpus import CorpusSchema

SIDES = ("free", "constrained")
TARGET = 0.90  # constrained / free output tokens/s that issue 16 asks for
# How the constraint is sent: vLLM's `structured_outputs` or OpenAI's `response_format`.
CONSTRAINT_FIELDS = ("structured-outputs", "response-format")


@dataclass(frozen=True)
class StructuredRequest:
    schema: CorpusSchema
    prompt: str
    max_tokens: int


def make_requests(schemas: list[CorpusSchema], count: int, max_tokens: int, tag: str = "") -> list[StructuredRequest]:
    """`count` requests cycling over `schemas`, each prompt its own (numbered, after `tag`)."""
    return [StructuredRequest(s, f"Request {tag}{i}: {s.description}. Answer with JSON only, realistic values.",
                              max_tokens)
            for i, s in ((i, schemas[i % len(schemas)]) for i in range(count))]


def constraint_body(field: str, schema: CorpusSchema) -> dict:
    """The body fields that ask for `schema` the way `field` names."""
    if field == "structured-outputs":
        return {"structured_outputs": {"json": schema.schema}}
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": schema.name, "schema": schema.schema, "strict": True}}}


def body_maker(side: str, field: str):
    """The load generator's `BodyOf` for one side: a streamed chat completion, greedy,
    `ignore_eos`, the request's `max_tokens`; the constrained side adds its schema."""
    def body_of(s: LoadSettings, req: StructuredRequest) -> tuple[str, dict]:
        body = streamed_with_counts({"model": s.model, "messages": [{"role": "user", "content": req.prompt}],
                                     "max_tokens": req.max_tokens, "temperature": 0, "ignore_eos": True})
        if side == "constrained":
            body.update(constraint_body(field, req.schema))
        return "/v1/chat/completions", body
    return body_of


def compare_serving(url: str, args: argparse.Namespace, schemas: list[CorpusSchema]) -> dict:
    """`args.rounds` rounds of `args.num_requests` requests per side against `url`; the result
    dict of the serving half."""
    for side in SIDES:
        print(f"--- {side}, warm-up (not counted)")
        warmup = make_requests(schemas, args.concurrency, args.max_tokens, f"warm-up {side} ")
        measure_serving(url, args, warmup, [], body_maker(side, args.constraint_field))

    def run_one(side: str, pair: int) -> dict:
        reqs = make_requests(schemas, args.num_requests, args.max_tokens, f"{pair}{side[0]}-")
        return measure_serving(url, args, reqs, [], body_maker(side, args.constraint_field))

    def primary(runs: dict[str, list[dict]]) -> list[float]:
        return ratio_stats(_tps(runs["constrained"]), _tps(runs["free"]))["per_pair"]
    runs = run_pairs(SIDES, run_one, PairPlan(args.rounds, args.rounds), primary)
    return summarize_sides(runs, args, schemas)


def _tps(runs: list[dict]) -> list[float]:
    return [r["output_tokens_per_s"] for r in runs]


def summarize_sides(runs: dict[str, list[dict]], args: argparse.Namespace,
                    schemas: list[CorpusSchema]) -> dict:
    """Each side's output tokens/s over all its rounds (tokens / seconds), the ratio, each
    round's ratio and their median, mean output lengths, finish reasons and errors."""
    sides = {}
    for side in SIDES:
        tokens = sum(r["output_tokens"] for r in runs[side])
        seconds = sum(r["seconds"] for r in runs[side])
        ok = sum(r["num_requests"] - r["errors"] for r in runs[side])
        reasons: dict[str, int] = {}
        for run in runs[side]:
            for reason, n in run["finish_reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + n
        sides[side] = {"output_tokens_per_s": round(tokens / seconds, 2) if seconds else 0.0,
                       "output_tokens": tokens, "seconds": round(seconds, 2),
                       "mean_output_tokens": round(tokens / ok, 1) if ok else 0.0,
                       "finish_reasons": reasons, "errors": sum(r["errors"] for r in runs[side]),
                       "runs": runs[side]}
    # NOTE: a round's two runs are adjacent in time, so its ratio sees the machine's noise on
    # both sides alike; the median of the rounds' ratios, with its interval, is the figure
    paired = ratio_stats(_tps(runs["constrained"]), _tps(runs["free"]))
    per_round = [round(r, 3) for r in paired["per_pair"]]
    free, constrained = sides["free"]["output_tokens_per_s"], sides["constrained"]["output_tokens_per_s"]
    ratio = round(constrained / free, 3) if free else None
    return {"constraint_field": args.constraint_field, "concurrency": args.concurrency,
            "max_tokens": args.max_tokens, "rounds": args.rounds, "requests_per_side_per_round": args.num_requests,
            "schemas": [s.name for s in schemas], **sides,
            "constrained_over_free": ratio, "target": TARGET,
            "meets_target": ratio is not None and ratio >= TARGET,
            "constrained_over_free_per_round": per_round,
            "constrained_over_free_median": round(paired["median"], 3) if per_round else None,
            "constrained_over_free_paired": paired,
            "errors": sides["free"]["errors"] + sides["constrained"]["errors"]}


def print_serving(result: dict) -> None:
    """The serving half as a table: each round, then both sides over all rounds."""
    print(f"\nfree vs constrained ({result['constraint_field']}), concurrency {result['concurrency']}, "
          f"max_tokens {result['max_tokens']}, output tokens/s:")
    print(f"{'round':>6} {'free':>10} {'constrained':>12} {'ratio':>7}")
    for i, ratio in enumerate(result["constrained_over_free_per_round"]):
        print(f"{i + 1:>6} {result['free']['runs'][i]['output_tokens_per_s']:>10.1f} "
              f"{result['constrained']['runs'][i]['output_tokens_per_s']:>12.1f} {ratio!s:>7}")
    print(f"{'all':>6} {result['free']['output_tokens_per_s']:>10.1f} "
          f"{result['constrained']['output_tokens_per_s']:>12.1f} {result['constrained_over_free']!s:>7}"
          f"  (target >= {result['target']}); the rounds' ratios: "
          f"{describe_ratio(result['constrained_over_free_paired'])}")
    for side in SIDES:
        s = result[side]
        errors = {e for run in s["runs"] for e in run["first_errors"]}
        print(f"{side}: mean output {s['mean_output_tokens']} tokens, finish {s['finish_reasons']}, "
              f"errors {s['errors']}" + (f" (first: {sorted(errors)[0]})" if errors else ""))
