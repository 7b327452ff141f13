"""The token bitmask of a step: filled for every constrained row in one parallel llguidance call,
then applied to the logits eagerly (no torch.compile), on CPU or CUDA tensors alike.

Bitmask layout (llguidance's): int32 `[rows, ceil(V/32)]`; bit j of word w allows token 32*w + j.
Rows without a matcher are never touched, and a batch without one costs nothing: callers test
`any(m is not None ...)` first (the Sampler does).

The fill can start before the model runs (`start`, on a thread of its own: llguidance drops the
GIL), since the matchers' state is settled once the last step's tokens were consumed; `apply`
then takes the finished bitmask, so the fill overlaps the forward pass instead of following it.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from llguidance import LLExecutor, LLMatcher

# NOTE: below this many cores the batch is filled row by row on the calling thread: on 2 cores a
# step's parallel call took 330 us for 16 rows (the pool's threads wake cold after the forward)
# against 170 us row by row, and the demo model's constrained/free throughput went 0.85 -> 0.90.
PARALLEL_FILL_MIN_CORES = 4

# the additive mask of each byte value's 8 bits, low bit first (0: allowed, -inf: forbidden): a
# little-endian int32 word's bytes in order give its 32 bits in token order (x86 and every CUDA
# host are little-endian). NOTE: a table lookup and an add are ~8x faster on CPU than
# masked_fill_ with a bool mask, which is slow on scattered patterns (1.4 ms for 16 x 49152).
_BYTE_BIAS = torch.where(((torch.arange(256)[:, None] >> torch.arange(8)) & 1).bool(), 0.0, float("-inf"))


@dataclass
class PendingMask:
    """A bitmask being filled: row k belongs to `matchers[k]`."""

    matchers: list[LLMatcher]
    future: Future


class GrammarMask:
    """Fills and applies the bitmask of the constrained rows of a batch."""

    def __init__(self, num_threads: int | None = None) -> None:
        cores = num_threads or len(os.sched_getaffinity(0))
        self.executor = LLExecutor(cores) if cores >= PARALLEL_FILL_MIN_CORES else None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="grammar-mask")
        self._tables: dict[torch.device, torch.Tensor] = {}

    def start(self, matchers: list[LLMatcher | None], vocab_size: int) -> PendingMask | None:
        """Begin filling the bitmask of the rows that have a matcher (None: no row has one)."""
        live = [m for m in matchers if m is not None]
        if not live:
            return None
        return PendingMask(live, self._worker.submit(self.fill, live, vocab_size))

    def apply(self, logits: torch.Tensor, matchers: list[LLMatcher | None],
              pending: PendingMask | None = None) -> None:
        """Set the logits of every token the row's matcher forbids to -inf, in place. Uses
        `pending` when it was started for these matchers (in any row order), else fills now."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return
        wanted = [matchers[i] for i in rows]
        bitmask = self._taken(pending, wanted)
        if bitmask is None:
            bitmask = self.fill(wanted, logits.shape[-1])
        apply_bitmask_(logits, bitmask, rows, self._table(logits.device))

    @staticmethod
    def _taken(pending: PendingMask | None, wanted: list[LLMatcher]) -> torch.Tensor | None:
        if pending is None:
            return None
        bitmask = pending.future.result()  # NOTE: always awaited: the fill must not outlive the step
        position = {id(m): k for k, m in enumerate(pending.matchers)}
        order = [position.get(id(m)) for m in wanted]
        if None in order:
            return None
        return bitmask if order == list(range(len(pending.matchers))) else bitmask[order]

    def fill(self, matchers: list[LLMatcher], vocab_size: int) -> torch.Tensor:
        """The CPU bitmask `[len(matchers), ceil(V/32)]`, filled in one parallel call (row by row
        on machines with fewer than PARALLEL_FILL_MIN_CORES cores)."""
        words = (vocab_size + 31) // 32
        bitmask = torch.full((len(matchers), words), -1, dtype=torch.int32)
        if self.executor is not None:
            self.executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)],
                                                  bitmask.data_ptr(), words * 4, len(matchers))
            return bitmask
        for row, matcher in enumerate(matchers):
            matcher.unsafe_compute_mask_ptr(bitmask.data_ptr() + row * words * 4, words * 4)
        return bitmask

    def _table(self, device: torch.device) -> torch.Tensor:
        if device not in self._tables:
            self._tables[device] = _BYTE_BIAS.to(device)
        return self._tables[device]


@torch.inference_mode()
def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int] | None = None,
                   table: torch.Tensor | None = None) -> None:
    """Forbid (-inf) in `logits` [N, V] every token whose bit is 0 in `bitmask` (a CPU tensor).

    `bitmask` row k belongs to logits row `rows[k]` (default: row k); other rows stay untouched.
    Tokens past 32 * words are forbidden too. Works on any device: the mask moves to the logits'.
    Runs in inference mode, so the runner's inference-mode logits can be updated in place.
    """
    rows = list(range(bitmask.shape[0])) if rows is None else rows
    vocab = logits.shape[-1]
    if table is None:
        table = _BYTE_BIAS.to(logits.device)
    # each byte of the words becomes its 8 tokens' biases: [k, W*4] -> [k, 32*W]
    data = bitmask.contiguous().view(torch.uint8).to(logits.device, non_blocking=True)
    bias = table.to(logits.dtype).index_select(0, data.flatten().long()).view(len(rows), -1)
    if bias.shape[1] >= vocab:
        bias = bias[:, :vocab]
    else:
        bias = torch.nn.functional.pad(bias, (0, vocab - bias.shape[1]), value=float("-inf"))
    if rows == list(range(logits.shape[0])):
        logits.add_(bias)
        return
    index = torch.tensor(rows, dtype=torch.long, device=logits.device)
    logits.index_copy_(0, index, logits.index_select(0, index).add_(bias))
