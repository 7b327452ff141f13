"""The prompt rows of one step: which logits rows score which prompt tokens, and their
reduction, slice by slice of the LM head's output."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from bastion.engine.outputs import TokenLogprob
from bastion.engine.prompt_logprobs.collector import PromptLogprobs

LOGIT_SLICE_ROWS = 512


@dataclass
class PromptRows:
    """The prompt tokens one step scores, in logits-row order after the sampling rows: per
    request, its collector, the first token and how many (`spans`); every row's token id
    (`targets`, on the device) and the largest top k asked."""

    spans: list[tuple[PromptLogprobs, int, int]]
    targets: torch.Tensor
    top: int
    _values: list[TokenLogprob] = field(default_factory=list)

    @classmethod
    def build(cls, wanted: list[tuple[PromptLogprobs, range, list[int]]],
              device: torch.device) -> "PromptRows | None":
        """From each asking request's collector, token range and token ids (None: none)."""
        if not wanted:
            return None
        ids = [t for _, tokens, all_ids in wanted for t in all_ids[tokens.start:tokens.stop]]
        return cls([(c, r.start, len(r)) for c, r, _ in wanted],
                   torch.tensor(ids, dtype=torch.long, device=device),
                   max(c.top for c, _, _ in wanted))

    def reduce(self, logits: torch.Tensor) -> None:
        """Reduce the next rows' float32 logits to their entries (kept until `deliver`)."""
        done = len(self._values)
        self._values += _score(logits, self.targets[done:done + logits.shape[0]], self.top)

    def deliver(self) -> None:
        """Hand each collector its entries (its own top k of them)."""
        at = 0
        for collector, first, count in self.spans:
            entries = self._values[at:at + count]
            if collector.top < self.top:
                entries = [TokenLogprob(e.token_id, e.logprob, e.rank, e.top[:collector.top]) for e in entries]
            collector.add(first, entries)
            at += count
        assert at == len(self._values), (at, len(self._values))


def _score(logits: torch.Tensor, targets: torch.Tensor, top: int) -> list[TokenLogprob]:
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, targets[:, None]).squeeze(-1)
    ranks = (logp > chosen[:, None]).sum(dim=-1) + 1
    top_vals, top_ids = logp.topk(top, dim=-1)
    # NOTE: one copy to the host per slice, after every reduction is queued
    rows = zip(targets.tolist(), chosen.tolist(), ranks.tolist(), top_ids.tolist(), top_vals.tolist())
    return [TokenLogprob(t, v, r, list(zip(ids, vals))) for t, v, r, ids, vals in rows]


def logit_slice_rows(config) -> int:
    """How many rows go through the LM head at once: never fewer than a step's sampling rows,
    so a step that scores no prompt computes its logits in one call, as before."""
    return max(LOGIT_SLICE_ROWS, config.scheduler.max_num_seqs)


def logit_slices(rows: torch.Tensor, slice_rows: int) -> Iterator[torch.Tensor]:
    """`rows` in slices of at most `slice_rows` (one slice, maybe empty, at the least). Every
    tensor-parallel worker of a rank slices alike: a split LM head's gather is collective."""
    for start in range(0, max(rows.shape[0], 1), slice_rows):
        yield rows[start:start + slice_rows]


def logits_and_scores(compute_logits: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor,
                      num_sampling: int, slice_rows: int, prompt: PromptRows | None) -> torch.Tensor:
    """The float32 logits of the first `num_sampling` of `rows`; the rest are prompt rows,
    reduced into `prompt`'s collectors slice by slice."""
    kept: list[torch.Tensor] = []
    done = 0
    for part in logit_slices(rows, slice_rows):
        logits = compute_logits(part).float()
        cut = max(0, min(num_sampling - done, logits.shape[0]))
        if cut or not kept:
            kept.append(logits[:cut])
        if cut < logits.shape[0]:
            prompt.reduce(logits[cut:])
        done += logits.shape[0]
    if prompt is not None:
        prompt.deliver()
    return kept[0] if len(kept) == 1 else torch.cat(kept)
