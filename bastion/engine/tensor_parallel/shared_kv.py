"""KV caches that worker 0 of a tensor-parallel rank can reach: one file per worker.

Under disaggregated serving a TP rank's KV is split over its workers by KV head, and only
worker 0 (the engine process) has a KV listener or a puller. On CPU each worker keeps its cache
in a file of its own (mode 0600, in the rank's private 0700 directory, next to the rendezvous
file) that it maps; worker 0 maps the others' too, and serves or fills every worker's share of
a prompt's blocks, one (layer, worker) pair after another. The workers touch only the blocks of
requests they are scheduled for; a pulled prompt's blocks are written before worker 0 schedules
it, and the step broadcast that follows orders the two.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bastion.model.parallel.private_file import map_private

Caches = list[tuple[torch.Tensor, torch.Tensor]]  # each layer's (keys, values)


def cache_path(store: str | Path, rank: int) -> Path:
    """Worker `rank`'s cache file, beside the rank's rendezvous file."""
    return Path(f"{store}.kv{rank}")


def map_caches(path: Path, layers: int, shape: tuple[int, ...], dtype: torch.dtype,
               create: bool = False) -> Caches:
    """The `layers` (keys, values) tensors of `shape` in the file at `path` (made zeroed, 0600,
    with `create`, refusing anything already there; else it must be our regular file of that
    size, not a symbolic link: model/parallel/private_file.py)."""
    per = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
    total = 2 * layers * per
    buffer = map_private(path, total, create)
    flat = torch.frombuffer(buffer, dtype=torch.uint8)
    views = [flat[i * per:(i + 1) * per].view(dtype).view(shape) for i in range(2 * layers)]
    return [(views[2 * i], views[2 * i + 1]) for i in range(layers)]


def every_worker(own: Caches, store: str | Path, size: int, shape: tuple[int, ...],
                 dtype: torch.dtype) -> Caches:
    """Worker 0's view of the whole rank's KV: for each layer, each worker's (keys, values)."""
    others = [map_caches(cache_path(store, rank), len(own), shape, dtype) for rank in range(1, size)]
    return [pair for i in range(len(own)) for pair in [own[i], *(o[i] for o in others)]]


def rank_caches(runner, workers) -> Caches:
    """What a rank's KV listener serves and its puller fills: each layer's caches, and with
    tensor-parallel `workers` every worker's share of each layer (layer-major, worker order)."""
    own = [(a.k_cache, a.v_cache) for a in runner.model.attention_layers]
    if workers is None:
        return own
    return every_worker(own, workers.group.store_path, workers.tp.size, runner.kv_shape, runner.dtype)
