"""The fixed English text the quality bench scores: public-domain passages shipped here.

The US Declaration of Independence (National Archives transcription, spelling as engraved:
"shewn", "harrass", "compleat", "Brittish") and the Gettysburg Address (the Bliss copy): both
are works of the US founders / a US president of the 18th-19th century, in the public domain.
"""
from __future__ import annotations

from pathlib import Path

PASSAGES = ("declaration_of_independence.txt", "gettysburg_address.txt")

# Greedy-generation prompts: short, plain English, no chat template.
PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To make a cup of tea, first",
    "The largest planet in our solar system",
)


def passage_text() -> str:
    """The passages joined by a blank line, exactly as shipped."""
    here = Path(__file__).parent
    return "\n\n".join((here / name).read_text(encoding="utf-8").strip() for name in PASSAGES) + "\n"
