"""Incremental text of a sequence: equals a full decode, cuts at stop strings, holds back prefixes."""
from __future__ import annotations

import pytest

from bastion.model.demo import DEMO_MODEL_DIR
from bastion.model.tokenizer import load_tokenizer
from bastion.server.detokenizer import SequenceText


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(DEMO_MODEL_DIR)


def stream(tok, text: str, stops: list[str]) -> tuple[list[str], SequenceText]:
    prompt = tok("Q:", add_special_tokens=False).input_ids
    seq = SequenceText(tok.backend_tokenizer, prompt, stops)
    pieces = []
    for token in tok(text, add_special_tokens=False).input_ids:
        seq.add([token])
        pieces.append(seq.release())
    pieces.append(seq.release(final=True))
    return pieces, seq


def test_streamed_pieces_join_to_the_full_decode(tok):
    text = "The function returns a dict, wörld 日本 and more."
    pieces, seq = stream(tok, text, [])
    assert "".join(pieces) == text == seq.text


def test_a_stop_string_cuts_the_text_and_is_never_streamed(tok):
    pieces, seq = stream(tok, "The function returns a value. Then more text", ["returns a", "zzz"])
    assert seq.stopped_by == "returns a"
    assert "".join(pieces) == seq.text == "The function "
    assert not any("ret" in p for p in pieces)


def test_text_that_may_become_a_stop_is_held_back_then_released(tok):
    seq = SequenceText(tok.backend_tokenizer, [], ["c d x"])
    seq.add(tok("a b c d", add_special_tokens=False).input_ids)
    assert seq.text == "a b c d" and seq.release() == "a b "     # "c d" may still become the stop
    seq.add(tok(" e", add_special_tokens=False).input_ids)
    assert seq.release() == "c d e" and seq.stopped_by is None    # now it cannot
