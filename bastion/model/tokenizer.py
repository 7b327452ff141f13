"""The checkpoint's own tokenizer and chat template, loaded from the local folder only."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from bastion.model.arch import ModelLoadError


def load_tokenizer(model: str | Path):
    """A transformers fast tokenizer for `model` (no hub access, ever)."""
    try:
        return AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer from {str(model)!r}: {exc}") from None
