"""Turns a scheduled step into tensors: token ids, positions, cache slots and attention metadata."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bastion.engine.prompt_logprobs import PromptRows
from bastion.engine.scheduler import ScheduledRequest
from bastion.model.attention import AttentionContext, DecodeGroup, PrefillChunk

# Decodes attend in groups of at most this many. Requests that share cached leading blocks
# (a common prompt prefix) form groups of their own, which gather the shared keys once; the
# rest are sorted by context length so that each group pads only to its own longest context.
DECODE_GROUP_SIZE = 32
MIN_SHARED_TOKENS = 32


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    logits_indices: torch.Tensor
    sampling: list[ScheduledRequest]   # requests that sample this step, in logits row order
    context: AttentionContext
    prompt: PromptRows | None = None   # prompt tokens scored this step: the logits rows after those

    @classmethod
    def build(cls, scheduled: list[ScheduledRequest], block_size: int,
              device: torch.device) -> "StepInputs":
        prefills = [s for s in scheduled if s.num_new_tokens > 1]
        ids: list[int] = []
        positions: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        ctx = AttentionContext(slot_mapping=torch.empty(0))
        decodes: list[ScheduledRequest] = []
        for group in _group_decodes([s for s in scheduled if s.num_new_tokens == 1], block_size):
            ctx.decodes.append(_decode_group(group, len(decodes), block_size, device, ids,
                                             positions, slots))
            decodes += group
        offset = len(decodes)
        for s in prefills:
            req = s.request
            end = s.start + s.num_new_tokens
            ids.extend(req.all_token_ids[s.start:end])
            pos = np.arange(s.start, end)
            blocks = np.asarray(req.block_ids, dtype=np.int64)
            positions.append(pos)
            slots.append(blocks[pos // block_size] * block_size + pos % block_size)
            table = torch.from_numpy(blocks[:-(-end // block_size)]).to(device)
            ctx.prefills.append(PrefillChunk(offset, s.num_new_tokens, end, table))
            offset += s.num_new_tokens
        ctx.slot_mapping = torch.from_numpy(np.concatenate(slots)).to(device)
        ordered = decodes + prefills
        ends = np.cumsum([s.num_new_tokens for s in ordered]) - 1
        logits_idx = [int(e) for s, e in zip(ordered, ends) if s.samples]
        prompt_idx, prompt = _prompt_rows(ordered, ends, device)
        return cls(input_ids=torch.tensor(ids, dtype=torch.long, device=device),
                   positions=torch.from_numpy(np.concatenate(positions)).to(device),
                   logits_indices=torch.tensor(logits_idx + prompt_idx, dtype=torch.long, device=device),
                   sampling=[s for s in ordered if s.samples], context=ctx, prompt=prompt)


def _prompt_rows(ordered: list[ScheduledRequest], ends: np.ndarray,
                 device: torch.device) -> tuple[list[int], PromptRows | None]:
    """The rows whose logits score prompt tokens this step (engine/prompt_logprobs/): for
    each request that asks, the rows of the positions before the tokens it still needs."""
    rows: list[int] = []
    wanted = []
    for s, last_row in zip(ordered, ends):
        collector = s.request.prompt_logprobs
        if collector is None:
            continue
        tokens = collector.wanted(s.start, s.start + s.num_new_tokens)
        if tokens:
            first_row = int(last_row) - s.num_new_tokens + 1 - s.start  # the row of position 0
            rows += range(first_row + tokens.start - 1, first_row + tokens.stop - 1)
            wanted.append((collector, tokens, s.request.all_token_ids))
    return rows, PromptRows.build(wanted, device)


def _group_decodes(decodes: list[ScheduledRequest], block_size: int) -> list[list[ScheduledRequest]]:
    """Split decodes into attention groups: shared-prefix runs first, then by context length."""
    min_blocks = -(-MIN_SHARED_TOKENS // block_size)
    by_first_block: dict[int, list[ScheduledRequest]] = {}
    for s in decodes:
        key = s.request.block_ids[0] if s.start >= min_blocks * block_size else -1 - len(by_first_block)
        by_first_block.setdefault(key, []).append(s)
    groups, rest = [], []
    for run in by_first_block.values():
        if len(run) < 2:
            rest += run
            continue
        run.sort(key=lambda s: s.start)
        groups += [run[i:i + DECODE_GROUP_SIZE] for i in range(0, len(run), DECODE_GROUP_SIZE)]
    rest.sort(key=lambda s: s.start)
    return groups + [rest[i:i + DECODE_GROUP_SIZE] for i in range(0, len(rest), DECODE_GROUP_SIZE)]


def _shared_blocks(tables: np.ndarray, pos: np.ndarray, block_size: int) -> int:
    """Leading blocks common to every row, all of them full and before each row's new token."""
    if len(tables) < 2:
        return 0
    limit = int(pos.min()) // block_size
    same = (tables[:, :limit] == tables[0, :limit]).all(axis=0)
    count = limit if same.all() else int(np.argmin(same))
    return count if count * block_size >= MIN_SHARED_TOKENS else 0


def _decode_group(group: list[ScheduledRequest], start: int, block_size: int, device: torch.device,
                  ids: list[int], positions: list[np.ndarray], slots: list[np.ndarray]) -> DecodeGroup:
    """Append the group's token ids, positions and slots; return its attention metadata."""
    ids.extend(s.request.all_token_ids[s.start] for s in group)
    pos = np.fromiter((s.start for s in group), dtype=np.int64, count=len(group))
    width = int(pos.max()) // block_size + 1
    tables = np.zeros((len(group), width), dtype=np.int64)
    for row, s in enumerate(group):
        blocks = s.request.block_ids[:width]
        tables[row, :len(blocks)] = blocks
    positions.append(pos)
    slots.append(tables[np.arange(len(group)), pos // block_size] * block_size + pos % block_size)
    return decode_group(start, torch.from_numpy(tables).to(device), torch.from_numpy(pos).to(device),
                        block_size, _shared_blocks(tables, pos, block_size))


def decode_group(start: int, tables: torch.Tensor, pos: torch.Tensor, block_size: int,
                 shared_blocks: int) -> DecodeGroup:
    """A group's attention metadata from its block tables [B, width] and positions [B] (its
    padding mask is made only if a backend asks for it)."""
    count = tables.shape[0]
    # NOTE: count 1 is attended unpadded, cut to its context length
    return DecodeGroup(start, count, tables, pos + 1, block_size, shared_blocks,
                       int(pos[0]) + 1 if count == 1 else 0)
