"""The strict reading of JSON schemas (`structured/named_properties.py`): objects get only the
properties the schema names, unless it allows others explicitly.

Each case is checked twice: the rewritten schema's shape, and what it means, by validating
instances with `jsonschema` (what the grammar then enforces token by token); every rewritten
schema must also compile in llguidance (not unsatisfiable)."""
from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from llguidance import LLMatcher

from bastion.structured.named_properties import only_named_properties
from bastion.structured.spec import GrammarError, StructuredOutputs

POINT = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


def valid(schema: dict, instance) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(instance)


def compiles(schema: dict) -> str:
    """llguidance's error for the schema's grammar ("" when it compiles)."""
    return LLMatcher.validate_grammar(LLMatcher.grammar_from_json_schema(schema), None)


def test_an_object_that_leaves_additional_properties_unset_gets_false():
    strict = only_named_properties(POINT)
    assert strict == {**POINT, "additionalProperties": False}
    assert valid(strict, {"x": 1}) and not valid(strict, {"x": 1, "y": 2})
    assert valid(POINT, {"x": 1, "y": 2})  # the letter, for contrast


def test_the_schema_given_is_not_changed():
    schema = {"type": "object", "properties": {"a": copy.deepcopy(POINT)}}
    before = copy.deepcopy(schema)
    only_named_properties(schema)
    assert schema == before


@pytest.mark.parametrize("explicit", [True, False, {"type": "string"}])
def test_an_explicit_additional_properties_is_left_as_written(explicit):
    schema = {**POINT, "additionalProperties": explicit}
    assert only_named_properties(schema) == schema


def test_pattern_properties_still_admit_what_they_match():
    schema = {"type": "object", "properties": {"id": {"type": "string"}},
              "patternProperties": {"^x-": {"type": "integer"}}}
    strict = only_named_properties(schema)
    assert strict["additionalProperties"] is False
    assert valid(strict, {"id": "a", "x-count": 3}) and not valid(strict, {"id": "a", "other": 3})


def test_nested_objects_items_defs_and_any_of_branches():
    schema = {"type": "object",
              "properties": {"owner": POINT,
                             "points": {"type": "array", "items": POINT},
                             "pair": {"type": "array", "prefixItems": [POINT, {"$ref": "#/$defs/Tag"}]},
                             "maybe": {"anyOf": [POINT, {"type": "null"}]},
                             "tag": {"$ref": "#/$defs/Tag"}},
              "$defs": {"Tag": {"type": "object", "properties": {"name": {"type": "string"}}}}}
    strict = only_named_properties(schema)
    props = strict["properties"]
    for node in (strict, props["owner"], props["points"]["items"], props["pair"]["prefixItems"][0],
                 props["maybe"]["anyOf"][0], strict["$defs"]["Tag"]):
        assert node["additionalProperties"] is False, node
    assert props["tag"] == {"$ref": "#/$defs/Tag"} and props["maybe"]["anyOf"][1] == {"type": "null"}
    assert valid(strict, {"owner": {"x": 1}, "tag": {"name": "a"}, "maybe": None})
    assert not valid(strict, {"tag": {"name": "a", "extra": 1}})
    assert not valid(strict, {"points": [{"x": 1, "extra": 1}]})
    assert not compiles(strict)


def test_a_recursive_schema_is_rewritten_once_and_still_compiles():
    tree = {"type": "object", "properties": {"value": {"type": "integer"},
                                             "children": {"type": "array", "items": {"$ref": "#"}}},
            "required": ["value"]}
    strict = only_named_properties(tree)
    assert strict["additionalProperties"] is False and strict["properties"]["children"]["items"] == {"$ref": "#"}
    assert valid(strict, {"value": 1, "children": [{"value": 2}]})
    assert not valid(strict, {"value": 1, "children": [{"value": 2, "x": 0}]})
    assert not compiles(strict)


def test_values_are_not_schemas_and_are_left_alone():
    schema = {"type": "object", "properties": {
        "kind": {"const": {"properties": {"a": 1}}},
        "mode": {"enum": [{"properties": {}}]},
        "cfg": {"type": "object", "default": {"properties": {}}, "examples": [{"properties": {}}]}},
        "x-guidance": {"whitespace_flexible": False}}
    strict = only_named_properties(schema)
    assert strict["properties"] == schema["properties"] and strict["x-guidance"] == schema["x-guidance"]


def test_an_object_that_names_no_properties_stays_free():
    """`{"type": "object"}` (json_object, a free-form map) names nothing: any object still goes."""
    for schema in ({"type": "object"}, {"type": "object", "required": ["a"]}, {"type": "string"}):
        assert only_named_properties(schema) == schema


def test_a_required_name_missing_from_properties_is_named():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]}
    strict = only_named_properties(schema)
    assert strict["properties"] == {"a": {"type": "integer"}, "b": True}
    assert valid(strict, {"a": 1, "b": "anything"}) and not valid(strict, {"a": 1, "b": 2, "c": 3})
    assert not compiles(strict)


def test_conditions_are_left_as_written():
    """`if` and `not` test the instance: making them strict would change what they test."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}},
              "if": {"properties": {"a": {"const": 1}}}, "not": {"properties": {"b": {}}, "required": ["b"]}}
    strict = only_named_properties(schema)
    assert strict["if"] == schema["if"] and strict["not"] == schema["not"]


def test_all_of_branches_describe_one_object_so_the_owner_names_them_all():
    schema = {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                        {"properties": {"b": {"type": "string"}}, "required": ["b"]}]}
    strict = only_named_properties(schema)
    assert strict["allOf"] == schema["allOf"]  # branches as written: each names only its part
    assert strict["properties"] == {"a": True, "b": True} and strict["additionalProperties"] is False
    assert valid(strict, {"a": 1, "b": "x"}) and not valid(strict, {"a": 1, "b": "x", "c": 0})
    assert not compiles(strict)
    naive = {"allOf": [{**b, "additionalProperties": False} for b in schema["allOf"]]}
    assert compiles(naive)  # what writing false into each branch would do: unsatisfiable


def test_an_all_of_branch_by_ref_stays_open_and_the_owner_names_its_properties():
    schema = {"$defs": {"Base": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
              "allOf": [{"$ref": "#/$defs/Base"}, {"properties": {"name": {"type": "string"}}}]}
    strict = only_named_properties(schema)
    assert strict["$defs"]["Base"] == schema["$defs"]["Base"]
    assert strict["properties"] == {"id": True, "name": True} and strict["additionalProperties"] is False
    assert valid(strict, {"id": 1, "name": "n"}) and not valid(strict, {"id": 1, "z": 0})
    assert not compiles(strict)


def test_properties_beside_any_of_branches_that_name_more_are_merged():
    schema = {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}},
              "anyOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {"type": "integer"}}}]}
    strict = only_named_properties(schema)
    assert strict["anyOf"] == schema["anyOf"]
    assert list(strict["properties"]) == ["kind", "a", "b"] and strict["additionalProperties"] is False
    assert valid(strict, {"kind": "a", "a": 1}) and not valid(strict, {"kind": "a", "c": 1})


def test_a_merge_whose_branch_allows_more_is_left_as_written():
    schema = {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}, "additionalProperties": True}]}
    assert only_named_properties(schema) == schema


def test_grammar_text_applies_the_rule_unless_told_to_follow_the_letter():
    text = json.dumps(POINT)
    strict, letter = StructuredOutputs(json=text).grammar_text(), StructuredOutputs(json=text).grammar_text(False)
    assert strict != letter
    assert strict == LLMatcher.grammar_from_json_schema({**POINT, "additionalProperties": False},
                                                        defaults={"whitespace_flexible": False, "coerce_one_of": True})
    forced = StructuredOutputs(json=text, disable_additional_properties=True)
    assert forced.grammar_text(False) == strict and forced.key != StructuredOutputs(json=text).key
    assert StructuredOutputs(json_object=True).grammar_text() == StructuredOutputs(json_object=True).grammar_text(False)


def test_a_schema_too_deep_to_rewrite_is_a_grammar_error(monkeypatch):
    """Python's recursion bound, met by the rewrite, is the client's 400, not an engine error."""
    def too_deep(schema):
        raise RecursionError

    monkeypatch.setattr("bastion.structured.spec.only_named_properties", too_deep)
    with pytest.raises(GrammarError, match="nested too deeply"):
        StructuredOutputs(json=json.dumps(POINT)).grammar_text()
    assert StructuredOutputs(json=json.dumps(POINT)).grammar_text(strict_properties=False)
