"""The checkpoint's own tokenizer and chat template, from the local folder or GGUF file only."""
from __future__ import annotations

import json
from pathlib import Path

from bastion.model.arch import ModelLoadError


def import_transformers() -> None:
    """Import the transformers package on the calling thread. NOTE: call it before starting a
    thread that loads a tokenizer: transformers replaces its module in sys.modules when its import
    ends, and a thread that imports it while another is still doing so gets the half-made module
    (`from transformers import X` raises ImportError there)."""
    import transformers  # noqa: F401


def load_tokenizer(model: str | Path):
    """A transformers fast tokenizer for `model`, a folder or a GGUF file (no hub access, ever)."""
    from bastion.model.gguf.reader import is_gguf

    if is_gguf(model):
        from bastion.model.gguf.tokenizer import load_gguf_tokenizer
        return load_gguf_tokenizer(model)
    try:
        return _tokenizer_class(Path(model)).from_pretrained(str(model), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer from {str(model)!r}: {exc}") from None


def _tokenizer_class(folder: Path):
    """The plain fast tokenizer class when the folder names it, as AutoTokenizer would pick; else
    AutoTokenizer. NOTE: AutoTokenizer imports torch and every config class (~2 s of each API
    server's start), which the plain class does not need."""
    try:
        named = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        named = None
    if named in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        from transformers.tokenization_utils_fast import PreTrainedTokenizerFast
        return PreTrainedTokenizerFast
    from transformers import AutoTokenizer
    return AutoTokenizer
