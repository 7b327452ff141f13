"""`bastion bench structured`'s pure parts: the corpus, cold compiles against the demo model's
vocabulary, the request bodies of each side and the ratio over rounds."""
from __future__ import annotations

import argparse
import json

from bastion.bench.load import LoadSettings
from bastion.bench.structured.compile_time import compile_one, measure_compile
from bastion.bench.structured.corpus import (SERVING_SCHEMAS, CorpusSchema, load_corpus, select,
                                             serving_schemas)
from bastion.bench.structured.serving import body_maker, make_requests, summarize_sides
from bastion.model.demo import DEMO_MODEL_DIR

CATEGORIES = {"tool-parameters", "pydantic", "api-payload", "config", "recursive", "json-ld",
              "extraction", "large", "bulk"}


def test_the_corpus_has_60_named_schemas_of_every_kind_and_some_large_ones():
    corpus = load_corpus()
    assert len(corpus) >= 60
    assert len({s.name for s in corpus}) == len(corpus)
    assert {s.category for s in corpus} == CATEGORIES
    assert all(isinstance(s.schema, dict) and s.description for s in corpus)
    large = [s for s in corpus if len(s.schema.get("properties", {})) >= 50]
    assert len(large) >= 3
    text = json.dumps([s.schema for s in corpus])
    for feature in ('"$defs"', '"anyOf"', '"enum"', '"format": "date-time"', '"format": "email"',
                    '"format": "uri"', '"pattern"', '"minimum"', '"additionalProperties": false',
                    '"required"', '"$ref": "#"'):
        assert feature in text, feature


def test_serving_schemas_are_fixed_length_arrays_of_objects():
    schemas = serving_schemas(load_corpus())
    assert [s.name for s in schemas] == list(SERVING_SCHEMAS)
    for s in schemas:
        (array,) = [p for p in s.schema["properties"].values() if p.get("type") == "array"]
        assert array["items"]["type"] == "object" and array["minItems"] == array["maxItems"] >= 80


def test_select_narrows_by_category_then_limit():
    corpus = load_corpus()
    tools = select(corpus, categories=["tool-parameters"])
    assert tools and all(s.category == "tool-parameters" for s in tools)
    assert select(corpus, 3) == corpus[:3]


BOUNDS = argparse.Namespace(structured_output_compile_timeout=10.0, structured_output_max_bytes=2**18,
                            structured_output_strict_properties=True)


def test_a_cold_compile_times_a_good_schema_and_reports_a_bad_ones_error():
    from bastion.bench.structured.compile_time import make_compiler, make_grammar_tokenizer

    tok, vocab, _ = make_grammar_tokenizer(str(DEMO_MODEL_DIR))
    compiler = make_compiler(tok, BOUNDS)
    good = compile_one(compiler, CorpusSchema("ok", "t", "d", {"type": "object", "properties": {"a": {"type": "integer"}}}))
    assert good["ok"] and good["compile_ms"] > 0 and "first_mask_ms" in good
    bad = compile_one(compiler, CorpusSchema("bad", "t", "d", {"type": "frob"}))
    assert not bad["ok"] and "frob" in bad["error"]


def test_measure_compile_goes_through_the_engines_compiler_and_counts_failures():
    schemas = [CorpusSchema("a", "t", "d", {"type": "string", "format": "email"}),
               CorpusSchema("b", "t", "d", {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
               CorpusSchema("c", "t", "d", {"$ref": "#/$defs/nope"}),
               CorpusSchema("d", "t", "d", {"$ref": "#"}),  # llguidance takes it; the engine's own check does not
               CorpusSchema("e", "t", "d", {"type": "string", "maxLength": 10, "description": "x" * 300})]
    bounds = argparse.Namespace(structured_output_compile_timeout=10.0, structured_output_max_bytes=300,
                                structured_output_strict_properties=True)
    result = measure_compile(str(DEMO_MODEL_DIR), "demo", schemas, bounds)
    assert (result["schemas"], result["compiled"], result["failed"]) == (5, 1, 4)
    assert [f["name"] for f in result["failures"]] == ["b", "c", "d", "e"]
    assert "uniqueItems" in result["failures"][0]["error"]
    assert "--structured-output-max-bytes" in result["failures"][3]["error"]
    assert result["compile_ms"]["p50"] == result["compile_ms"]["max"] > 0


def test_both_sides_send_the_same_prompt_and_only_the_constrained_side_a_schema():
    schema = serving_schemas(load_corpus())[0]
    (req,) = make_requests([schema], 1, 64)
    s = LoadSettings("http://x", "m")
    free_path, free = body_maker("free", "structured-outputs")(s, req)
    path, so = body_maker("constrained", "structured-outputs")(s, req)
    _, rf = body_maker("constrained", "response-format")(s, req)
    assert free_path == path == "/v1/chat/completions"
    assert free["messages"] == so["messages"] == rf["messages"]
    assert free["max_tokens"] == so["max_tokens"] == 64 and free["ignore_eos"] and so["ignore_eos"]
    assert "structured_outputs" not in free and "response_format" not in free
    assert so["structured_outputs"] == {"json": schema.schema}
    assert rf["response_format"]["json_schema"] == {"name": schema.name, "schema": schema.schema, "strict": True}


def _run(tokens: int, seconds: float, errors: int = 0) -> dict:
    return {"output_tokens": tokens, "seconds": seconds, "num_requests": 4, "errors": errors,
            "output_tokens_per_s": tokens / seconds, "finish_reasons": {"length": 4 - errors}}


def test_sides_are_summed_over_rounds_and_compared():
    args = argparse.Namespace(constraint_field="structured-outputs", concurrency=16, max_tokens=8,
                              rounds=2, num_requests=4)
    runs = {"free": [_run(32, 1.0), _run(32, 3.0)], "constrained": [_run(32, 2.0), _run(24, 2.0, errors=1)]}
    result = summarize_sides(runs, args, [])
    assert result["free"]["output_tokens_per_s"] == 16.0 and result["constrained"]["output_tokens_per_s"] == 14.0
    assert result["constrained_over_free"] == 0.875 and not result["meets_target"]
    assert result["constrained_over_free_per_round"] == [0.5, 1.125]
    assert result["constrained_over_free_median"] == 0.812
    assert result["constrained"]["mean_output_tokens"] == 8.0 and result["errors"] == 1
    assert result["constrained"]["finish_reasons"] == {"length": 7}
