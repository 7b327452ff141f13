"""The strict reading of a JSON schema: an object gets only the properties the schema names.

JSON Schema's letter lets an object that leaves `additionalProperties` unset carry any other
property, and llguidance follows the letter, so a model may go on adding properties of its own
until `max_tokens`. xgrammar (vLLM's and SGLang's default backend) is strict by default, as is
vLLM's guidance option `disable_additional_properties`: `only_named_properties` writes that
reading into the schema before it is compiled (`StructuredOutputs.grammar_text`), unless
`--no-structured-output-strict-properties` asks for the letter.

The rule, per subschema (found under `properties`, `items`, `anyOf`, `$defs`, ... at any depth;
never inside `const`, `enum`, `default`, `examples` or `x-guidance`, which are values):

* an object schema that names properties (`properties` or `patternProperties`) and leaves both
  `additionalProperties` and `unevaluatedProperties` unset gets `"additionalProperties": false`;
  a name in its `required` that `properties` lacks is added as `name: true` (it is named);
* an explicit `additionalProperties` (true, false or a schema) or `unevaluatedProperties` is
  left as written, and `patternProperties` still admit the names they match;
* schemas that describe one object together (`allOf` branches, or an object that names
  properties and also has `anyOf`/`oneOf`/`$ref`/`then`/`else` branches that name some) are
  merged by the compiler, so each one naming only its part would forbid the others' names: the
  owner of such a merge gets the rule with every name of its branches (added as `name: true`),
  and the branches stay as written (unless a branch allows other properties explicitly, then
  nothing of the merge changes). A `$defs` entry that such a branch references stays as written
  everywhere it is used.

`anyOf`/`oneOf` branches under an owner that names nothing are alternatives: each is read on its
own. The schema given is not changed; a new one is returned.
"""
from __future__ import annotations

from urllib.parse import unquote

from bastion.structured.json_pointer import resolve_pointer

# keywords whose value is one subschema, a list of them, or a map of them
# (`not`, `if` and `dependentSchemas` are conditions on the instance, left as written)
_ONE = ("additionalProperties", "additionalItems", "items", "contains", "propertyNames",
        "unevaluatedItems", "unevaluatedProperties")
_MANY = ("prefixItems", "items")
_MAP = ("properties", "patternProperties", "$defs", "definitions")
# applicators whose subschemas describe the same instance as their owner
_MERGED_LISTS = ("allOf", "anyOf", "oneOf")
_MERGED_ONE = ("then", "else")
_EXPLICIT = ("additionalProperties", "unevaluatedProperties", "patternProperties")


def only_named_properties(schema: dict) -> dict:
    """`schema` with `"additionalProperties": false` wherever an object schema names its
    properties and leaves others unset (the module docstring has the whole rule)."""
    return _Rewrite(schema).node(schema, "#", merged=False)


class _Rewrite:
    def __init__(self, root: dict) -> None:
        self.root = root
        self.open: set[str] = set()  # pointers ("#", "#/$defs/X") that a merge's branch references
        self._closures: dict[int, tuple[list[str], bool]] = {}  # by id() of a node of `root`
        self._find_open(root, set())

    def node(self, node, pointer: str, merged: bool):
        """The rewritten subschema at `pointer`; `merged`: a branch of an owner's merge."""
        if not isinstance(node, dict):
            return node
        merged = merged or pointer in self.open
        owner = not merged and self._is_merge(node)
        out = dict(node)
        for key, value in node.items():
            if key in _ONE and isinstance(value, dict):
                out[key] = self.node(value, f"{pointer}/{key}", False)
            elif key in _MANY and isinstance(value, list):
                out[key] = [self.node(v, f"{pointer}/{key}/{i}", False) for i, v in enumerate(value)]
            elif key in _MAP and isinstance(value, dict):
                out[key] = {name: self.node(v, f"{pointer}/{key}/{_escape(name)}", False)
                            for name, v in value.items()}
            elif key in _MERGED_LISTS and isinstance(value, list):
                out[key] = [self.node(v, f"{pointer}/{key}/{i}", merged or owner) for i, v in enumerate(value)]
            elif key in _MERGED_ONE and isinstance(value, dict):
                out[key] = self.node(value, f"{pointer}/{key}", merged or owner)
        if owner:
            names, explicit = self._closure(node)
            if not explicit:
                _close(out, names)
        elif not merged and _names_properties(node) and not any(k in node for k in _EXPLICIT[:2]):
            _close(out, _own_names(node))
        return out

    def _is_merge(self, node: dict) -> bool:
        """Whether more than one part of `node` names properties of the one object it describes."""
        parts = [_names_properties(node)]
        allof = node.get("allOf")
        if isinstance(allof, list):
            parts += [bool(self._closure(b)[0]) for b in allof]
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                parts.append(any(self._closure(b)[0] for b in node[key]))
        for key in _MERGED_ONE:
            if isinstance(node.get(key), dict):
                parts.append(bool(self._closure(node[key])[0]))
        if isinstance(node.get("$ref"), str):
            parts.append(bool(self._closure(self._target(node["$ref"]))[0]))
        return sum(parts) > 1

    def _closure(self, node) -> tuple[list[str], bool]:
        """The property names `node` and its same-instance branches name (in order), and whether
        any of them allows other properties explicitly. Each node is worked out once (a node met
        again while its own closure is being made counts as naming nothing more), so a schema
        costs time linear in its size."""
        if not isinstance(node, dict):
            return [], False
        key = id(node)
        if key in self._closures:
            return self._closures[key]
        self._closures[key] = ([], False)  # NOTE: a cycle through $ref adds nothing new
        names, explicit = list(_own_names(node)), any(k in node for k in _EXPLICIT)
        branches = _merge_branches(node)
        if isinstance(node.get("$ref"), str):
            branches.append(self._target(node["$ref"]))
        for branch in branches:
            more, allows = self._closure(branch)
            names += [n for n in more if n not in names]
            explicit = explicit or allows
        self._closures[key] = (names, explicit)
        return names, explicit

    def _find_open(self, node, seen: set[int]) -> None:
        """Mark the definitions that some merge's branches reference (they stay as written)."""
        if isinstance(node, list):
            for item in node:
                self._find_open(item, seen)
            return
        if not isinstance(node, dict) or id(node) in seen:
            return
        seen.add(id(node))
        if self._is_merge(node):
            marked: set[int] = set()
            for branch in _merge_branches(node):
                self._mark_refs(branch, marked)
        for key, value in node.items():
            if key in _ONE + _MANY + _MAP + _MERGED_LISTS + _MERGED_ONE:
                self._find_open(list(value.values()) if key in _MAP and isinstance(value, dict) else value, seen)

    def _mark_refs(self, node, seen: set[int]) -> None:
        if not isinstance(node, dict) or id(node) in seen:
            return
        seen.add(id(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            self.open.add(_canonical(ref))
            self._mark_refs(self._target(ref), seen)
        for branch in _merge_branches(node):
            self._mark_refs(branch, seen)

    def _target(self, ref: str):
        """The subschema a local `$ref` names (None when it is not local or does not resolve)."""
        if ref != "#" and not ref.startswith("#/"):
            return None
        return resolve_pointer(self.root, ref, None)

def _merge_branches(node: dict) -> list:
    branches = [b for key in _MERGED_LISTS if isinstance(node.get(key), list) for b in node[key]]
    return branches + [node[key] for key in _MERGED_ONE if isinstance(node.get(key), dict)]


def _names_properties(node: dict) -> bool:
    return isinstance(node.get("properties"), dict) or isinstance(node.get("patternProperties"), dict)


def _own_names(node: dict) -> list[str]:
    props = node.get("properties")
    names = list(props) if isinstance(props, dict) else []
    required = node.get("required")
    if isinstance(required, list):
        names += [n for n in required if isinstance(n, str) and n not in names]
    return names


def _close(out: dict, names: list[str]) -> None:
    """Forbid other properties in `out`, naming `names` in its `properties` (as `true` when new)."""
    props = out.get("properties")
    props = dict(props) if isinstance(props, dict) else {}
    missing = [n for n in names if n not in props]
    if missing or "properties" in out:
        out["properties"] = {**props, **{n: True for n in missing}}
    out["additionalProperties"] = False


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _canonical(ref: str) -> str:
    """A pointer as `node()` spells positions: unquoted, `~0`/`~1` escapes kept."""
    return unquote(ref)
