"""Checks of our own on a JSON schema, before llguidance sees it: a `$ref` cycle with no base case.

llguidance compiles `{"$ref": "#"}` without an error, yet no finite JSON value matches it, so a
model would generate forever. A schema is refused when some `$ref` it uses can only be satisfied
by following itself again (e.g. `{"$ref": "#"}`, or `$defs` A -> B -> A with nothing else). A
legitimately recursive schema (a tree whose optional `children` items `$ref` "#") has a base case
(an empty array) and passes. Pure functions: the engine's compiler and the API server's checker
call the same code.
"""
from __future__ import annotations

import json

from bastion.structured.json_pointer import MISSING, resolve_pointer
from bastion.structured.spec import GrammarError, StructuredOutputs

_ANY_OF = ("anyOf", "oneOf")


def check_spec(spec: StructuredOutputs) -> None:
    """Raise GrammarError when `spec` is a JSON schema that fails our own checks."""
    if spec.json is None:
        return
    try:
        schema = json.loads(spec.json)
    except ValueError:
        return  # spec.grammar_text() reports malformed JSON
    if isinstance(schema, dict):
        message = ref_cycle_error(schema)
        if message:
            raise GrammarError(message)


def ref_cycle_error(schema: dict) -> str | None:
    """The error text when a local `$ref` of `schema` has no finite instance, else None.

    A subschema is *finite* unless every value it admits must contain a non-finite `$ref`: a
    `$ref` and `allOf` members are always required, `anyOf`/`oneOf` need one finite member,
    `properties` count only when `required`, `items`/`prefixItems` only up to `minItems`.
    Refs that do not resolve locally are llguidance's to report. Solved as a fixpoint (the
    productive symbols of a grammar).
    """
    try:
        targets = {}
        for ref in _local_refs(schema):
            node = resolve_pointer(schema, ref)
            if node is not MISSING:
                targets[ref] = node
        finite: set[str] = set()
        changed = True
        while changed:
            changed = False
            for ref, node in targets.items():
                if ref not in finite and _finite(node, finite, targets):
                    finite.add(ref)
                    changed = True
    except RecursionError:
        return "the JSON schema is nested too deeply to check"
    bad = sorted(set(targets) - finite)
    if not bad:
        return None
    names = ", ".join(repr(r) for r in bad)
    return (f"the JSON schema's $ref cycle has no base case (no finite value matches {names}): "
            "give the recursion a way out, e.g. an optional property or an array that may be empty")




def _finite(node, finite: set[str], targets: dict) -> bool:
    if not isinstance(node, dict):
        return True  # true/false schemas: llguidance judges `false` itself
    ref = node.get("$ref")
    if isinstance(ref, str) and ref in targets and ref not in finite:
        return False
    if not all(_finite(s, finite, targets) for s in _list(node.get("allOf"))):
        return False
    for key in _ANY_OF:
        members = _list(node.get(key))
        if members and not any(_finite(s, finite, targets) for s in members):
            return False
    props = node.get("properties")
    if isinstance(props, dict):
        for name in _list(node.get("required")):
            if isinstance(name, str) and name in props and not _finite(props[name], finite, targets):
                return False
    min_items = node.get("minItems", 0)
    min_items = min_items if isinstance(min_items, int) else 0
    prefix = _list(node.get("prefixItems"))
    if not all(_finite(s, finite, targets) for s in prefix[:min_items]):
        return False
    items = node.get("items")
    if min_items > len(prefix) and isinstance(items, dict) and not _finite(items, finite, targets):
        return False
    return True


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _local_refs(node) -> set[str]:
    """Every `$ref` string in the schema that points into this document ("#..." )."""
    refs: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
                refs.add(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return refs
