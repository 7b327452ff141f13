"""The checkpoint's own tokenizer and chat template, from the local folder or GGUF file only."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from bastion.model.arch import ModelLoadError


def load_tokenizer(model: str | Path):
    """A transformers fast tokenizer for `model`, a folder or a GGUF file (no hub access, ever)."""
    from bastion.model.gguf.reader import is_gguf

    if is_gguf(model):
        from bastion.model.gguf.tokenizer import load_gguf_tokenizer
        return load_gguf_tokenizer(model)
    try:
        return AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer from {str(model)!r}: {exc}") from None
