"""The token bitmask of a step: filled for every constrained row in one parallel llguidance call,
then applied to the logits eagerly (no torch.compile), on CPU or CUDA tensors alike.

Bitmask layout (llguidance's): int32 `[rows, ceil(V/32)]`; bit j of word w allows token 32*w + j.
Rows without a matcher are never touched, and a batch without one costs nothing: callers test
`any(m is not None ...)` first (the Sampler does).
"""
from __future__ import annotations

import torch
from llguidance import LLExecutor, LLMatcher


class GrammarMask:
    """Fills and applies the bitmask of the constrained rows of a batch."""

    def __init__(self, num_threads: int | None = None) -> None:
        self.executor = LLExecutor(num_threads)
        self._bits: dict[torch.device, torch.Tensor] = {}

    def apply(self, logits: torch.Tensor, matchers: list[LLMatcher | None]) -> None:
        """Set the logits of every token the row's matcher forbids to -inf, in place."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return
        bitmask = self.fill([matchers[i] for i in rows], logits.shape[-1])
        apply_bitmask_(logits, bitmask, rows, self.bit_positions(logits.device))

    def fill(self, matchers: list[LLMatcher], vocab_size: int) -> torch.Tensor:
        """The CPU bitmask `[len(matchers), ceil(V/32)]`, filled in one parallel call."""
        words = (vocab_size + 31) // 32
        bitmask = torch.full((len(matchers), words), -1, dtype=torch.int32)
        self.executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)],
                                              bitmask.data_ptr(), words * 4, len(matchers))
        return bitmask

    def bit_positions(self, device: torch.device) -> torch.Tensor:
        if device not in self._bits:
            self._bits[device] = torch.arange(32, dtype=torch.int32, device=device)
        return self._bits[device]


@torch.inference_mode()
def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int] | None = None,
                   bits: torch.Tensor | None = None) -> None:
    """Forbid (-inf) in `logits` [N, V] every token whose bit is 0 in `bitmask`.

    `bitmask` row k belongs to logits row `rows[k]` (default: row k); other rows stay untouched.
    Tokens past 32 * words are forbidden too. Works on any device: the mask moves to the logits'.
    Runs in inference mode, so the runner's inference-mode logits can be updated in place.
    """
    rows = list(range(bitmask.shape[0])) if rows is None else rows
    vocab = logits.shape[-1]
    bitmask = bitmask.to(logits.device, non_blocking=True)
    if bits is None:
        bits = torch.arange(32, dtype=torch.int32, device=logits.device)
    # bit j of word w is token 32*w + j: [k, W, 32] -> [k, 32*W]
    allowed = ((bitmask[:, :, None] >> bits) & 1).bool().flatten(1)
    width = min(vocab, allowed.shape[1])
    forbid = torch.ones(len(rows), vocab, dtype=torch.bool, device=logits.device)
    forbid[:, :width] = ~allowed[:, :width]
    index = torch.tensor(rows, dtype=torch.long, device=logits.device)
    block = logits.index_select(0, index)
    block.masked_fill_(forbid, float("-inf"))
    logits.index_copy_(0, index, block)
