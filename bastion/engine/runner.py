"""The model runner: owns the model and the KV pool, turns a scheduled step into logits."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bastion.config.engine import EngineConfig
from bastion.engine.cpu_memory import back_with_huge_pages, keep_freed_memory
from bastion.engine.prompt_logprobs import logit_slice_rows, logits_and_scores
from bastion.engine.scheduler import ScheduledRequest, SchedulerOutput
from bastion.engine.step_inputs import StepInputs
from bastion.model.arch import ArchConfig, ModelLoadError, read_arch_config
from bastion.model.attention import AttentionContext, attention_context
from bastion.model.attention.choose import make_backend
from bastion.model.fused_decode import FusedDecoder
from bastion.model.loader import compute_dtype, load_model, resolve_device, resolve_dtype
from bastion.engine.tensor_parallel.shared_kv import cache_path, map_caches
from bastion.model.parallel.group import TensorGroup
from bastion.model.parallel.plan import TensorParallel

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_MEMORY = 4 * 2**30  # vLLM's CPU default too

StepSink = Callable[[torch.Tensor, torch.Tensor, AttentionContext, torch.Tensor], None]


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


def _held_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor the model's modules hold: parameters, buffers, KV caches, and the packed or
    quantized weights their linear kernels keep (one level of plain objects down)."""
    found: list[torch.Tensor] = []
    for module in model.modules():
        found += [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        for value in vars(module).values():
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif hasattr(value, "__dict__") and not isinstance(value, (torch.nn.Module, type)):
                found += [v for v in vars(value).values() if isinstance(v, torch.Tensor)]
    return found


class ModelRunner:
    """Loads the checkpoint, allocates the paged KV cache and runs forward passes."""

    def __init__(self, config: EngineConfig, tp: TensorParallel = TensorParallel(),
                 group: TensorGroup | None = None, step_sink: StepSink | None = None) -> None:
        """`tp` and `group`: this process is worker `tp.rank` of a tensor-parallel rank whose
        workers sum their partial results over `group` (model/parallel/); worker 0 hands each
        step's inputs to `step_sink` (engine/tensor_parallel/workers.py) before its forward pass."""
        self.config = config
        self.step_sink = step_sink
        mc = config.model
        self.device = resolve_device(mc.device)
        if self.device.type == "cpu":
            torch.set_num_threads(config.threads_per_worker if tp.enabled else config.threads)
            keep_freed_memory()
        torch.manual_seed(mc.seed)
        self.arch: ArchConfig = read_arch_config(mc.model)
        tp.check(self.arch)
        self.tp = tp
        self.local_arch = tp.local_config(self.arch)  # this worker's heads, KV heads and MLP slice
        self.requested_dtype = resolve_dtype(mc.dtype, self.arch.torch_dtype, self.device)
        self.dtype = compute_dtype(self.requested_dtype, self.device)
        model_len = self._model_len_cap()
        self.model = load_model(mc.model, self.arch, self.dtype, self.device, model_len, mc.quantization, tp)
        if group is not None:
            self.model.use_tensor_group(group.all_reduce, group.logits_gather(tp.vocab_chunk(self.arch),
                                                                              self.arch.vocab_size))
        self.model.use_attention_backend(make_backend(mc.attention_backend, self.device, self.dtype,
                                                      self.local_arch))
        self.block_size = config.cache.block_size
        num_blocks = self._num_blocks(model_len)
        self.limits = self._limits(model_len, num_blocks)
        self._allocate_kv(num_blocks, group)
        if tp.enabled:
            logger.info("decode steps run eagerly: the fused step does not split over tensor-parallel workers")
        elif not mc.enforce_eager:
            self.model.fused_decoder = FusedDecoder.build(self.model, self.block_size)
        if self.device.type == "cpu" and mc.huge_pages:
            back_with_huge_pages(_held_tensors(self.model))
        self.forward_seconds = 0.0
        self.logit_slice_rows = logit_slice_rows(config)
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
        a = self.local_arch
        elem = torch.empty(0, dtype=self.dtype).element_size()
        return 2 * a.num_layers * self.block_size * a.num_kv_heads * a.head_dim * elem

    def _num_blocks(self, model_len: int) -> int:
        cache = self.config.cache
        if cache.num_kv_blocks is not None:
            return cache.num_kv_blocks
        budget = cache.kv_cache_memory
        if budget is None:
            budget = self._default_kv_memory(model_len)
        num = budget // self._kv_bytes_per_block()
        if num < 1:
            raise ModelLoadError(f"--kv-cache-memory {budget} bytes is less than one KV block "
                                 f"({self._kv_bytes_per_block()} bytes)")
        return num

    def _default_kv_memory(self, model_len: int) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.85)
        # Enough for every sequence slot at full length, capped to keep CPU memory modest.
        needed = self.config.scheduler.max_num_seqs * model_len // self.block_size + 1
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

    @property
    def kv_shape(self) -> tuple[int, int, int, int]:
        """One layer's keys (or values) cache on this worker: [KV heads, blocks, block, dim]."""
        a = self.local_arch
        return (a.num_kv_heads, self.limits.num_kv_blocks, self.block_size, a.head_dim)

    def _allocate_kv(self, num_blocks: int, group: TensorGroup | None) -> None:
        layers = self.model.attention_layers
        if group is not None and self.config.kv_transfer.role != "both":
            # NOTE: in a file worker 0 maps too (engine/tensor_parallel/shared_kv.py); zeroed
            caches = map_caches(cache_path(group.store_path, self.tp.rank), len(layers), self.kv_shape,
                                self.dtype, create=True)
            group.all_reduce(torch.zeros(1))  # every worker's file exists before worker 0 maps them
        else:  # NOTE: zeros, not empty: masked-out padding slots must hold finite values.
            caches = [(torch.zeros(self.kv_shape, dtype=self.dtype, device=self.device),
                       torch.zeros(self.kv_shape, dtype=self.dtype, device=self.device)) for _ in layers]
        for layer, (keys, values) in zip(layers, caches):
            layer.k_cache, layer.v_cache = keys, values

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> tuple[list[ScheduledRequest], torch.Tensor]:
        """Run one step; return the requests that sample and their float32 logits."""
        batch = StepInputs.build(out.scheduled, self.block_size, self.device)
        if self.step_sink is not None:
            self.step_sink(batch.input_ids, batch.positions, batch.context, batch.logits_indices)
        started = time.perf_counter()
        with attention_context(batch.context):
            hidden = self.model(batch.input_ids, batch.positions)
        # NOTE: rows after the sampling ones score prompt tokens (engine/prompt_logprobs/)
        logits = logits_and_scores(self.model.compute_logits, hidden[batch.logits_indices],
                                   len(batch.sampling), self.logit_slice_rows, batch.prompt)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.forward_seconds += time.perf_counter() - started
        return batch.sampling, logits
