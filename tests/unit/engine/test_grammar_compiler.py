"""GrammarCompiler (cache, size and time bounds, errors) and our own $ref-cycle check."""
from __future__ import annotations

import json
import threading

import pytest

from bastion.model.demo import DEMO_MODEL_DIR
from bastion.model.tokenizer import load_tokenizer
from bastion.structured.compiler import GrammarCompiler
from bastion.structured.schema_checks import check_spec, ref_cycle_error
from bastion.structured.spec import GrammarError, StructuredOutputs as S
from bastion.structured.tokenizer import grammar_tokenizer

TREE = {"type": "object", "properties": {"value": {"type": "integer"},
                                         "children": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["value", "children"]}
CYCLES = [
    {"$ref": "#"},
    {"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}},
    {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]},
    {"type": "array", "items": {"$ref": "#"}, "minItems": 1},
    {"allOf": [{"$ref": "#/definitions/x"}], "definitions": {"x": {"anyOf": [{"$ref": "#"}]}}},
]
FINE = [
    TREE,
    {"type": "object", "properties": {"next": {"$ref": "#"}}},  # optional: the base case
    {"anyOf": [{"type": "null"}, {"type": "array", "items": {"$ref": "#"}, "minItems": 1}]},
    {"$ref": "#/$defs/missing"},  # unresolvable: llguidance's to report
    {"type": "string"},
]


@pytest.mark.parametrize("schema", CYCLES)
def test_a_ref_cycle_with_no_base_case_is_refused(schema):
    message = ref_cycle_error(schema)
    assert message and "$ref cycle has no base case" in message
    with pytest.raises(GrammarError, match="no base case"):
        check_spec(S(json=json.dumps(schema)))


@pytest.mark.parametrize("schema", FINE)
def test_schemas_with_a_base_case_pass(schema):
    assert ref_cycle_error(schema) is None
    check_spec(S(json=json.dumps(schema)))


@pytest.fixture(scope="module")
def tokenizer():
    return grammar_tokenizer(load_tokenizer(DEMO_MODEL_DIR), 4096, [1])


def compiler(tokenizer, **kw) -> GrammarCompiler:
    return GrammarCompiler(lambda: tokenizer, **{"timeout": 30, "max_bytes": 2**20, "cache_size": 4, **kw})


def error_of(future) -> str:
    exc = future.exception(60)
    assert isinstance(exc, GrammarError), exc
    return str(exc)


def test_the_same_grammar_text_compiles_once_and_each_caller_gets_the_pristine_matcher(tokenizer):
    c = compiler(tokenizer)
    first = c.submit(S(regex="[a-z]+")).result(60)
    again = c.submit(S(regex="[a-z]+"))
    assert again.done() and again.result() is first and (c.hits, c.misses) == (1, 1)
    assert not first.is_error() and first.consume_token(tokenizer.tokenize_str("abc")[0])
    c.submit(S(choice=["a", "b"])).result(60)
    assert (c.hits, c.misses) == (1, 2)


def test_the_cache_forgets_the_least_recently_used(tokenizer):
    c = compiler(tokenizer, cache_size=2)
    for spec in (S(regex="a+"), S(regex="b+"), S(regex="a+"), S(regex="c+"), S(regex="b+")):
        c.submit(spec).result(60)
    assert (c.hits, c.misses) == (1, 4)  # a+ hit; b+ was evicted by c+


def test_bad_grammars_fail_with_the_reason(tokenizer):
    c = compiler(tokenizer)
    assert "Invalid type: frob" in error_of(c.submit(S(json='{"type": "frob"}')))
    assert "unclosed character class" in error_of(c.submit(S(regex="[a-")))
    assert "no base case" in error_of(c.submit(S(json='{"$ref": "#"}')))
    assert "not valid JSON" in error_of(c.submit(S(json="{")))
    assert c.submit(S(json=json.dumps(TREE))).result(60) is not None


def test_the_size_bound(tokenizer):
    c = compiler(tokenizer, max_bytes=10)
    assert "--structured-output-max-bytes" in error_of(c.submit(S(regex="a" * 11)))
    assert c.submit(S(regex="a" * 10)).result(60) is not None


def test_a_compile_over_the_time_bound_fails_and_the_pool_keeps_working(tokenizer):
    # 20000 alternatives: tens of milliseconds to compile, far past a 1 ms bound
    huge = S(regex="(" + "|".join(f"w{i}x{i * 7919 % 100003}" for i in range(20000)) + ")")
    c = compiler(tokenizer, timeout=0.001)
    assert "--structured-output-compile-timeout" in error_of(c.submit(huge))
    slow_gbnf = "root ::= r0\n" + "\n".join(f'r{i} ::= "w{i}" r{i + 1} | "x"' for i in range(400)) + '\nr400 ::= "end"'
    assert "--structured-output-compile-timeout" in error_of(c.submit(S(grammar=slow_gbnf)))
    gate = threading.Event()
    stuck = GrammarCompiler(lambda: (gate.wait(60), tokenizer)[1], timeout=0.05, max_bytes=2**20,
                            cache_size=4)
    try:
        assert "did not compile within 0.05 s" in error_of(stuck.submit(S(regex="x")))
    finally:
        gate.set()
    assert stuck.submit(S(regex="y")).result(60) is not None


def test_a_tokenizer_that_cannot_load_fails_requests_not_the_compiler():
    def broken():
        raise OSError("no tokenizer.json")
    c = GrammarCompiler(broken, timeout=30, max_bytes=100, cache_size=4)
    assert "unavailable for this model: no tokenizer.json" in error_of(c.submit(S(regex="x")))
