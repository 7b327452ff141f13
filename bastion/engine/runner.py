"""The model runner: owns the model and the KV pool, turns a scheduled step into logits."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from bastion.config import EngineConfig
from bastion.engine.scheduler import ScheduledRequest, SchedulerOutput
from bastion.engine.cpu_memory import keep_freed_memory
from bastion.model.arch import ArchConfig, ModelLoadError, read_arch_config
from bastion.model.attention import AttentionContext, PrefillChunk, attention_context
from bastion.model.loader import compute_dtype, load_model, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_MEMORY = 4 * 2**30  # vLLM's CPU default too


@dataclass(frozen=True)
class EngineLimits:
    """Sizes found at start-up (not configured): context length and the KV pool."""

    max_model_len: int
    num_kv_blocks: int
    block_size: int
    vocab_size: int

    @property
    def pool_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size


class ModelRunner:
    """Loads the checkpoint, allocates the paged KV cache and runs forward passes."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        mc = config.model
        self.device = resolve_device(mc.device)
        if self.device.type == "cpu":
            torch.set_num_threads(config.threads)
            keep_freed_memory()
        torch.manual_seed(mc.seed)
        self.arch: ArchConfig = read_arch_config(mc.model)
        self.requested_dtype = resolve_dtype(mc.dtype, self.arch.torch_dtype, self.device)
        self.dtype = compute_dtype(self.requested_dtype, self.device)
        model_len = self._model_len_cap()
        self.model = load_model(mc.model, self.arch, self.dtype, self.device, model_len)
        self.block_size = config.cache.block_size
        num_blocks = self._num_blocks()
        self.limits = self._limits(model_len, num_blocks)
        self._allocate_kv(num_blocks)
        self.forward_seconds = 0.0
        logger.info("model %s (%s, %s on %s): %d KV blocks of %d tokens, max_model_len %d",
                    mc.model, self.arch.architecture, str(self.dtype).removeprefix("torch."),
                    self.device, num_blocks, self.block_size, self.limits.max_model_len)

    def _model_len_cap(self) -> int:
        native = self.arch.max_position_embeddings
        if self.arch.sliding_window:
            native = min(native, self.arch.sliding_window)
        wanted = self.config.model.max_model_len
        if wanted is not None and wanted > native:
            raise ModelLoadError(f"--max-model-len {wanted} exceeds the model's context of {native} tokens")
        return wanted or native

    def _kv_bytes_per_block(self) -> int:
        a = self.arch
        elem = torch.empty(0, dtype=self.dtype).element_size()
        return 2 * a.num_layers * self.block_size * a.num_kv_heads * a.head_dim * elem

    def _num_blocks(self) -> int:
        cache = self.config.cache
        if cache.num_kv_blocks is not None:
            return cache.num_kv_blocks
        budget = cache.kv_cache_memory
        if budget is None:
            budget = self._default_kv_memory()
        num = budget // self._kv_bytes_per_block()
        if num < 1:
            raise ModelLoadError(f"--kv-cache-memory {budget} bytes is less than one KV block "
                                 f"({self._kv_bytes_per_block()} bytes)")
        return num

    def _default_kv_memory(self) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.85)
        # Enough for every sequence slot at full length, capped to keep CPU memory modest.
        needed = self.config.scheduler.max_num_seqs * self._model_len_cap() // self.block_size + 1
        return min(DEFAULT_CPU_KV_MEMORY, needed * self._kv_bytes_per_block())

    def _limits(self, model_len: int, num_blocks: int) -> EngineLimits:
        pool = num_blocks * self.block_size
        if model_len > pool:
            if self.config.model.max_model_len is not None:
                raise ModelLoadError(
                    f"--max-model-len {model_len} does not fit the KV pool of {pool} tokens "
                    f"({num_blocks} blocks); raise --kv-cache-memory/--num-kv-blocks or lower --max-model-len")
            logger.info("max_model_len capped from %d to the KV pool's %d tokens", model_len, pool)
            model_len = pool
        return EngineLimits(model_len, num_blocks, self.block_size, self.arch.vocab_size)

    def _allocate_kv(self, num_blocks: int) -> None:
        a = self.arch
        shape = (a.num_kv_heads, num_blocks, self.block_size, a.head_dim)
        for layer in self.model.attention_layers:
            # NOTE: zeros, not empty: masked-out padding slots must hold finite values.
            layer.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            layer.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> tuple[list[ScheduledRequest], torch.Tensor]:
        """Run one step; return the requests that sample and their float32 logits."""
        batch = _StepInputs.build(out.scheduled, self.block_size, self.device)
        started = time.perf_counter()
        with attention_context(batch.context):
            hidden = self.model(batch.input_ids, batch.positions)
        logits = self.model.compute_logits(hidden[batch.logits_indices]).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.forward_seconds += time.perf_counter() - started
        return batch.sampling, logits


@dataclass
class _StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    logits_indices: torch.Tensor
    sampling: list[ScheduledRequest]
    context: AttentionContext

    @classmethod
    def build(cls, scheduled: list[ScheduledRequest], block_size: int,
              device: torch.device) -> "_StepInputs":
        decodes = [s for s in scheduled if s.num_new_tokens == 1]
        prefills = [s for s in scheduled if s.num_new_tokens > 1]
        ids: list[int] = []
        pos_parts: list[np.ndarray] = []
        slot_parts: list[np.ndarray] = []
        ctx = AttentionContext(slot_mapping=torch.empty(0), num_decodes=len(decodes))
        if decodes:
            ids, pos, slots, tables, lens = _decode_arrays(decodes, block_size)
            pos_parts.append(pos)
            slot_parts.append(slots)
            ctx.decode_block_tables = torch.from_numpy(tables).to(device)
            span = torch.arange(tables.shape[1] * block_size, device=device)
            padding = span[None, :] >= torch.from_numpy(lens).to(device)[:, None]
            ctx.decode_mask = torch.zeros(padding.shape, device=device).masked_fill_(
                padding, float("-inf")).view(1, len(decodes), 1, -1)
        offset = len(decodes)
        for s in prefills:
            req = s.request
            end = s.start + s.num_new_tokens
            ids.extend(req.all_token_ids[s.start:end])
            pos = np.arange(s.start, end)
            blocks = np.asarray(req.block_ids, dtype=np.int64)
            pos_parts.append(pos)
            slot_parts.append(blocks[pos // block_size] * block_size + pos % block_size)
            table = None if s.start == 0 else torch.from_numpy(blocks[:-(-end // block_size)]).to(device)
            ctx.prefills.append(PrefillChunk(offset, s.num_new_tokens, end, table))
            offset += s.num_new_tokens
        ctx.slot_mapping = torch.from_numpy(np.concatenate(slot_parts)).to(device)
        ordered = decodes + prefills
        ends = np.cumsum([s.num_new_tokens for s in ordered]) - 1
        sampling = [s for s in ordered if s.samples]
        logits_idx = [int(e) for s, e in zip(ordered, ends) if s.samples]
        return cls(input_ids=torch.tensor(ids, dtype=torch.long, device=device),
                   positions=torch.from_numpy(np.concatenate(pos_parts)).to(device),
                   logits_indices=torch.tensor(logits_idx, dtype=torch.long, device=device),
                   sampling=sampling, context=ctx)


def _decode_arrays(decodes: list[ScheduledRequest], block_size: int):
    """Token ids, positions, slots, padded block tables and context lengths of decode requests."""
    ids = [s.request.all_token_ids[s.start] for s in decodes]
    pos = np.fromiter((s.start for s in decodes), dtype=np.int64, count=len(decodes))
    width = int(pos.max()) // block_size + 1
    tables = np.zeros((len(decodes), width), dtype=np.int64)
    for row, s in enumerate(decodes):
        blocks = s.request.block_ids[:width]
        tables[row, :len(blocks)] = blocks
    slots = tables[np.arange(len(decodes)), pos // block_size] * block_size + pos % block_size
    return ids, pos, slots, tables, pos + 1
