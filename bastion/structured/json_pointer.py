"""Local JSON pointers ("#/$defs/a") into a JSON schema, as `$ref` uses them (RFC 6901)."""
from __future__ import annotations

from urllib.parse import unquote

MISSING = object()


def resolve_pointer(schema: dict, ref: str, missing=MISSING):
    """The subschema a local "#/a/b" JSON pointer names, or `missing`."""
    node = schema
    for part in ref[2:].split("/") if ref != "#" else []:
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return missing
    return node
