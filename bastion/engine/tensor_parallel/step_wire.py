"""A step's model inputs as one int64 tensor, broadcast from tensor-parallel worker 0 (which
schedules) to the other workers (which only run the model). No pickle: a header
[tokens, decode groups, prefill chunks, payload length, logits rows] and a flat payload:

    input ids, positions, cache slots (each [tokens]), the rows that get logits [logits rows];
    per decode group: start, count, width, shared blocks, then its block tables [count * width];
    per prefill chunk: query start, query length, context length, table length (-1: none), table.

Decode masks are rebuilt from the tables and positions (step_inputs.decode_group). A header of
-1 tokens tells the workers to stop.
"""
from __future__ import annotations

import torch

from bastion.engine.step_inputs import decode_group
from bastion.model.attention import AttentionContext, PrefillChunk

HEADER = 5
STOP = -1


def encode(input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext,
           logits_indices: torch.Tensor) -> torch.Tensor:
    """The step as a flat int64 CPU tensor (header first)."""
    parts = [input_ids, positions, ctx.slot_mapping, logits_indices]
    for g in ctx.decodes:
        parts += [torch.tensor([g.start, g.count, g.block_tables.shape[1], g.shared_blocks]),
                  g.block_tables.reshape(-1)]
    for c in ctx.prefills:
        table = c.block_table
        parts.append(torch.tensor([c.query_start, c.query_len, c.context_len,
                                   -1 if table is None else table.numel()]))
        if table is not None:
            parts.append(table)
    payload = torch.cat([p.to("cpu", torch.int64).reshape(-1) for p in parts])
    header = torch.tensor([input_ids.numel(), len(ctx.decodes), len(ctx.prefills), payload.numel(),
                           logits_indices.numel()])
    return torch.cat([header, payload])


def decode(header: torch.Tensor, payload: torch.Tensor, block_size: int, device: torch.device
           ) -> tuple[torch.Tensor, torch.Tensor, AttentionContext, torch.Tensor]:
    """input ids, positions, the attention context and the logits rows from `encode`'s parts."""
    tokens, groups, prefills, _, logit_rows = (int(v) for v in header)
    at = 0

    def take(n: int) -> torch.Tensor:
        nonlocal at
        at += n
        return payload[at - n:at]

    input_ids, positions, slots = take(tokens), take(tokens), take(tokens)
    logits_indices = take(logit_rows).to(device)
    ctx = AttentionContext(slot_mapping=slots.to(device))
    for _ in range(groups):
        start, count, width, shared = (int(v) for v in take(4))
        tables = take(count * width).view(count, width).to(device)
        ctx.decodes.append(decode_group(start, tables, positions[start:start + count].to(device),
                                        block_size, shared))
    for _ in range(prefills):
        query_start, query_len, context_len, table_len = (int(v) for v in take(4))
        table = None if table_len < 0 else take(table_len).to(device)
        ctx.prefills.append(PrefillChunk(query_start, query_len, context_len, table))
    return input_ids.to(device), positions.to(device), ctx, logits_indices
