"""The grammar bitmask: applied eagerly against a plain Python reference (CPU, and CUDA when there
is one), filled for a batch in one call, and never touching rows without a grammar."""
from __future__ import annotations

import pytest
import torch
from llguidance import LLMatcher

from bastion.engine.request import Request
from bastion.engine.sampler import Sampler
from bastion.model.demo import DEMO_MODEL_DIR
from bastion.model.tokenizer import load_tokenizer
from bastion.sampling_params import SamplingParams
from bastion.structured.mask import GrammarMask, apply_bitmask_
from bastion.structured.spec import StructuredOutputs
from bastion.structured.tokenizer import grammar_tokenizer

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                              reason="no CUDA device"))]


def reference(logits: list[list[float]], bitmask: list[list[int]], rows: list[int]) -> list[list[float]]:
    """Plain Python: token t of row rows[k] stays iff bit t%32 of word t//32 of mask row k is 1."""
    out = [list(r) for r in logits]
    for k, row in enumerate(rows):
        for t in range(len(out[row])):
            word = t // 32
            allowed = word < len(bitmask[k]) and (bitmask[k][word] >> (t % 32)) & 1
            if not allowed:
                out[row][t] = float("-inf")
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab,words", [(70, 3), (64, 2), (100, 3)])
def test_apply_matches_the_python_reference(device, vocab, words):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(4, vocab, generator=gen)
    bitmask = torch.randint(-2**31, 2**31 - 1, (2, words), generator=gen, dtype=torch.int64).to(torch.int32)
    bitmask[1, 0] = -1  # every bit set, sign bit included
    rows = [3, 1]
    expected = reference(logits.tolist(), bitmask.tolist(), rows)
    on_device = logits.to(device)
    apply_bitmask_(on_device, bitmask, rows)
    assert on_device.device.type == device
    assert on_device.cpu().tolist() == expected
    assert on_device[0].cpu().tolist() == logits[0].tolist() and on_device[2].cpu().tolist() == logits[2].tolist()


@pytest.fixture(scope="module")
def tokenizer():
    return grammar_tokenizer(load_tokenizer(DEMO_MODEL_DIR), 4096, [1])


def matcher(tokenizer, spec: StructuredOutputs) -> LLMatcher:
    m = LLMatcher(tokenizer, spec.grammar_text())
    assert not m.is_error(), m.get_error()
    return m


@pytest.mark.parametrize("threads", [1, 4], ids=["row-by-row", "one-parallel-call"])
def test_a_batch_fill_equals_each_matchers_own_mask(tokenizer, threads):
    specs = [StructuredOutputs(choice=["yes", "no"]), StructuredOutputs(regex="[0-9]+"),
             StructuredOutputs(json_object=True)]
    matchers = [matcher(tokenizer, s) for s in specs]
    grammar_mask = GrammarMask(threads)
    assert (grammar_mask.executor is None) == (threads < 4)
    filled = grammar_mask.fill(matchers, 4096)
    for row, m in enumerate(matchers):
        own = torch.frombuffer(bytearray(m.compute_bitmask()), dtype=torch.int32)
        assert filled[row].tolist() == own[:filled.shape[1]].tolist()  # its own has a spare word


@pytest.mark.parametrize("device", DEVICES)
def test_only_the_constrained_row_changes_and_allows_exactly_the_grammars_tokens(tokenizer, device):
    m = matcher(tokenizer, StructuredOutputs(choice=["yes", "no"]))
    logits = torch.randn(3, 4096, device=device)
    before = logits.clone()
    GrammarMask().apply(logits, [None, m, None])
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    texts = {tokenizer.decode_str([t]) for t in allowed}
    assert texts and all("yes".startswith(t) or "no".startswith(t) for t in texts)


def test_a_mask_started_before_the_forward_is_applied_to_the_rows_in_their_logits_order(tokenizer):
    """The fill may start before the model runs, in the scheduler's order; the logits' rows may
    come in another order: each row still gets its own matcher's mask."""
    yes_no = matcher(tokenizer, StructuredOutputs(choice=["yes", "no"]))
    digits = matcher(tokenizer, StructuredOutputs(regex="[0-9]+"))
    logits = torch.randn(3, 4096)
    expected = logits.clone()
    GrammarMask().apply(expected, [digits, None, yes_no])
    grammar_mask = GrammarMask()
    pending = grammar_mask.start([yes_no, None, digits], 4096)
    grammar_mask.apply(logits, [digits, None, yes_no], pending)
    assert torch.equal(logits, expected)


def test_a_batch_without_grammars_makes_no_mask():
    sampler = Sampler(0)
    req = Request("r", [1, 2, 3], SamplingParams(temperature=0), frozenset(), 100)
    sampler(torch.randn(1, 50), [req])
    assert sampler.grammar_mask is None
