"""`TensorParallel`: how a model is split over `size` workers and what worker `rank` holds.

Megatron's split for Llama-family layers: q/k/v and gate/up are column-parallel (each worker
computes its own heads and its own slice of the MLP), o and down are row-parallel (each worker
multiplies its slice of the inputs; an all-reduce sums the partial outputs). KV heads are split
across workers, or replicated when there are fewer KV heads than workers (each worker then holds
the one KV head its query heads use). The LM head is vocabulary-parallel: each worker multiplies
by its rows of the vocabulary and worker 0 gathers the logits (the head is the largest single
product of a small model; replicated, worker 0 alone streamed all of it while the others waited).
The embedding and the norms are replicated: a lookup reads only the step's rows, where a
vocabulary-parallel embedding would add an all-reduce of the hidden states to every step. A
model whose shapes do not split is refused at start-up with the numbers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bastion.model.arch_config import ArchConfig, ModelLoadError


@dataclass(frozen=True)
class TensorParallel:
    size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"tensor-parallel worker {self.rank} of {self.size}")

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def check(self, cfg: ArchConfig) -> None:
        """ModelLoadError naming the numbers when `cfg` cannot be split over `size` workers."""
        n = self.size
        if n == 1:
            return
        problems = []
        if cfg.num_heads % n:
            problems.append(f"{cfg.num_heads} query heads do not divide into {n} workers")
        if cfg.num_kv_heads % n and n % cfg.num_kv_heads:
            problems.append(f"{cfg.num_kv_heads} KV heads neither divide into {n} workers nor "
                            f"replicate evenly over them")
        if cfg.intermediate_size % n:
            problems.append(f"the MLP's {cfg.intermediate_size} columns do not divide into {n} workers")
        if problems:
            raise ModelLoadError(f"--tensor-parallel-size {n} cannot shard this model: "
                                 + "; ".join(problems))

    def local_config(self, cfg: ArchConfig) -> ArchConfig:
        """The shapes one worker's model has (its heads, its KV heads, its MLP slice)."""
        if self.size == 1:
            return cfg
        self.check(cfg)
        return dataclasses.replace(
            cfg, num_heads=cfg.num_heads // self.size,
            num_kv_heads=max(1, cfg.num_kv_heads // self.size),
            intermediate_size=cfg.intermediate_size // self.size)

    def kv_head_start(self, cfg: ArchConfig) -> int:
        """The first (global) KV head this worker holds."""
        if cfg.num_kv_heads >= self.size:
            return self.rank * (cfg.num_kv_heads // self.size)
        return self.rank // (self.size // cfg.num_kv_heads)  # replicated: the head its queries use

    def row_slice(self, cfg: ArchConfig, param: str, shard: int | None) -> slice | None:
        """Rows of checkpoint tensor (part `shard` of merged `param`) this worker keeps; None: all."""
        if self.size == 1:
            return None
        local = self.local_config(cfg)
        if "qkv_proj" in param:
            if shard == 0:
                width = local.num_heads * cfg.head_dim
                return slice(self.rank * width, (self.rank + 1) * width)
            start = self.kv_head_start(cfg) * cfg.head_dim
            return slice(start, start + local.num_kv_heads * cfg.head_dim)
        if "gate_up_proj" in param:
            width = local.intermediate_size
            return slice(self.rank * width, (self.rank + 1) * width)
        if param == "lm_head.weight":
            return self.vocab_rows(cfg)
        return None

    def vocab_rows(self, cfg: ArchConfig) -> slice | None:
        """The LM head's rows (token ids) this worker computes logits for: a share of
        `vocab_chunk` ids (the last worker's may be shorter); None without parallelism."""
        if self.size == 1:
            return None
        chunk = self.vocab_chunk(cfg)
        return slice(min(cfg.vocab_size, self.rank * chunk), min(cfg.vocab_size, (self.rank + 1) * chunk))

    def vocab_chunk(self, cfg: ArchConfig) -> int:
        """Vocabulary ids per worker (the vocabulary split in `size` shares, rounded up)."""
        return -(-cfg.vocab_size // self.size)

    def column_slice(self, cfg: ArchConfig, param: str) -> slice | None:
        """Columns (inputs) of a row-parallel weight (o_proj, down_proj) this worker keeps."""
        if self.size == 1 or not param.endswith(".weight"):
            return None
        local = self.local_config(cfg)
        if "o_proj" in param:
            width = local.num_heads * cfg.head_dim
        elif "down_proj" in param:
            width = local.intermediate_size
        else:
            return None
        return slice(self.rank * width, (self.rank + 1) * width)
