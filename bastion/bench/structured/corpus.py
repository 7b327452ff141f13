"""The bench's corpus of real-world JSON schemas (`schemas.json`, written for bastion in the
shapes clients send: tool parameters, pydantic models, API payloads, config files, recursive
trees, JSON-LD, extraction, large flat records) and the schemas the serving half sends."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

# NOTE: arrays of objects whose minItems keep a constrained output going past any --max-tokens
# the bench is run with, so both sides generate the same number of tokens.
SERVING_SCHEMAS = ("synthetic_users", "product_catalog_page", "log_events_batch")


@dataclass(frozen=True)
class CorpusSchema:
    name: str
    category: str
    description: str
    schema: dict

    @property
    def text(self) -> str:
        """The schema as JSON text (what `StructuredOutputs.json` holds)."""
        return json.dumps(self.schema)


def load_corpus() -> list[CorpusSchema]:
    """Every schema of `schemas.json`, in its order."""
    doc = json.loads(resources.files(__package__).joinpath("schemas.json").read_text())
    return [CorpusSchema(e["name"], e["category"], e["description"], e["schema"]) for e in doc["schemas"]]


def select(corpus: list[CorpusSchema], limit: int | None = None,
           categories: list[str] | None = None) -> list[CorpusSchema]:
    """The corpus narrowed to `categories` (all when None), then its first `limit` schemas."""
    chosen = [s for s in corpus if not categories or s.category in categories]
    return chosen[:limit] if limit is not None else chosen


def serving_schemas(corpus: list[CorpusSchema]) -> list[CorpusSchema]:
    """The bulk schemas the serving half sends, in `SERVING_SCHEMAS` order."""
    by_name = {s.name: s for s in corpus}
    return [by_name[name] for name in SERVING_SCHEMAS]
