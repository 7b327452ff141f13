"""Which request fields a running server documents in its `/openapi.json`.

Tests of a field that is not on the branch yet skip themselves through `require`, naming the
field, so they run as soon as the field lands (the document is the server's own word on its
bodies). A field may be declared before it is implemented (`response_format` once took only
`{"type": "text"}`), so `require` can also ask that the field's schema mention a word.
"""
from __future__ import annotations

import json

import httpx
import pytest


class OpenAPIFields:
    """The request-body schemas of one server's document."""

    def __init__(self, url: str, **http) -> None:
        r = httpx.get(f"{url}/openapi.json", timeout=30, **http)
        r.raise_for_status()
        self.doc = r.json()

    def field_schema(self, route: str, dotted: str) -> dict | None:
        """The schema of `dotted` (e.g. "sampling_params.json_schema") in `route`'s POST body."""
        try:
            body = self.doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        except KeyError:
            return None
        schema = self._resolve(body)
        for name in dotted.split("."):
            found = None
            for alternative in self._alternatives(schema):
                if name in alternative.get("properties", {}):
                    found = self._resolve(alternative["properties"][name])
                    break
            if found is None:
                return None
            schema = found
        return schema

    def has(self, route: str, dotted: str, mentions: str | None = None) -> bool:
        schema = self.field_schema(route, dotted)
        if schema is None:
            return False
        return mentions is None or mentions in json.dumps(self._expand(schema, depth=6))

    def require(self, route: str, dotted: str, mentions: str | None = None) -> None:
        """Skip the calling test unless the server documents the field (and the word)."""
        # NOTE: the reader itself must find what is surely there, else every test would skip
        parent = dotted.rpartition(".")[0]
        assert self.field_schema(route, parent or "stream") is not None, f"{route} unreadable in /openapi.json"
        if not self.has(route, dotted, mentions):
            what = f"'{dotted}'" + (f" with '{mentions}'" if mentions else "")
            pytest.skip(f"waiting for so-api: {route} does not document {what} in /openapi.json")

    def _resolve(self, schema: dict) -> dict:
        for _ in range(20):
            ref = schema.get("$ref")
            if not ref:
                return schema
            node = self.doc
            for part in ref.removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def _alternatives(self, schema: dict) -> list[dict]:
        """`schema` itself and, one level down, the branches of anyOf/oneOf/allOf."""
        out = [schema]
        for key in ("anyOf", "oneOf", "allOf"):
            out += [self._resolve(s) for s in schema.get(key, [])]
        return out

    def _expand(self, node, depth: int):
        """`node` with its $refs replaced by their targets, `depth` levels deep."""
        if isinstance(node, dict):
            if "$ref" in node and depth > 0:
                return self._expand(self._resolve(node), depth - 1)
            return {k: self._expand(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [self._expand(v, depth) for v in node]
        return node
