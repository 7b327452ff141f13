"""The vocabulary a grammar is compiled against: llguidance's view of the checkpoint's tokenizer."""
from __future__ import annotations

from copy import copy

from llguidance import LLTokenizer


def grammar_tokenizer(hf_tokenizer, vocab_size: int, eos_token_ids: list[int] | None = None) -> LLTokenizer:
    """llguidance's tokenizer for a transformers fast tokenizer (about 0.2 s for 50k tokens; make
    it once). `vocab_size` is the width of the model's logits (ids past the tokenizer's own
    vocabulary are never allowed); `eos_token_ids` are the tokens that may end a grammar (default:
    the tokenizer's EOS)."""
    from llguidance.hf import from_tokenizer  # NOTE: imports transformers (~0.6 s): only when used

    eos = [t for t in eos_token_ids or [] if 0 <= t < vocab_size] or None
    return from_tokenizer(hf_tokenizer, n_vocab=vocab_size, eos_token=eos)


def tokenizer_json(hf_tokenizer) -> str:
    """The fast tokenizer as the JSON text llguidance's `LLTokenizer` reads: what
    `grammar_tokenizer` hands it (added tokens included; no padding, no truncation). A process
    without transformers (the API server's grammar check worker) builds the same vocabulary from
    it: `LLTokenizer(text, n_vocab=vocab_size, eos_token=eos_ids)`."""
    backend = copy(hf_tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    return backend.to_str()
