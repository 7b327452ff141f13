"""The tokenizer and chat template a GGUF file carries, as a transformers fast tokenizer."""
from __future__ import annotations

from pathlib import Path

from bastion.model.arch_config import ModelLoadError


def load_gguf_tokenizer(path: str | Path):
    """transformers builds the tokenizer from the file's `tokenizer.ggml.*` metadata and takes
    `tokenizer.chat_template` as its chat template; nothing is written anywhere."""
    from transformers import AutoTokenizer

    path = Path(path).resolve()
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except Exception as exc:  # NOTE: transformers' GGUF converters raise KeyError, ValueError, ...
        raise ModelLoadError(f"cannot build the tokenizer from the GGUF file {str(path)!r}: "
                             f"{type(exc).__name__}: {exc}") from None
