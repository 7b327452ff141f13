"""The engine's config: model, KV cache and scheduler, a tree of frozen dataclasses validated
once at construction.

Values discovered at run time (the model's real context length, the number of KV blocks that
fit in memory) do not live here: they are computed into `bastion.engine.runner.EngineLimits`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}

SUPPORTED_DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("int8", "int4")  # weight-only: int8 per output channel, int4 in groups of 32..256
ATTENTION_BACKENDS = ("auto", "torch-sdpa", "cpu-paged")


def parse_bytes(text: str | int) -> int:
    """Parse a size such as ``4GiB``, ``512MB``, ``1.5g`` or ``1048576`` into bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"invalid size {text!r}: use a number with an optional unit "
            "(B, KB, MB, GB, KiB, MiB, GiB), e.g. 4GiB")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint to run, and how."""

    model: str
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    seed: int = 0
    quantization: str | None = None
    enforce_eager: bool = False
    attention_backend: str = "auto"
    huge_pages: bool = True  # on CPU: weights and KV pool in 2 MiB pages (engine/cpu_memory.py)

    def __post_init__(self) -> None:
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"--attention-backend must be one of {', '.join(ATTENTION_BACKENDS)}, "
                             f"got {self.attention_backend!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, "
                             f"got {self.quantization!r}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(SUPPORTED_DTYPES)}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"--max-model-len must be at least 2, got {self.max_model_len}")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: block size, pool size and prefix caching."""

    block_size: int = 16
    kv_cache_memory: int | None = None
    num_kv_blocks: int | None = None
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"--block-size must be a power of two, got {self.block_size}")
        if self.kv_cache_memory is not None and self.num_kv_blocks is not None:
            raise ValueError("give either --kv-cache-memory or --num-kv-blocks, not both")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"--kv-cache-memory must be positive, got {self.kv_cache_memory}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"--num-kv-blocks must be at least 1, got {self.num_kv_blocks}")


@dataclass(frozen=True)
class SchedulerConfig:
    """How much work one engine step may take on."""

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"--max-num-batched-tokens must be at least 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"--max-num-seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_seqs > self.max_num_batched_tokens:
            raise ValueError("--max-num-seqs cannot exceed --max-num-batched-tokens "
                             f"({self.max_num_seqs} > {self.max_num_batched_tokens})")


@dataclass(frozen=True)
class StructuredOutputConfig:
    """Bounds on structured-output grammars: the API server checks them once it has admitted a
    request, the engine compiles under the same time bound and keeps compiled grammars. The
    waiting bounds are the API server's alone: compiles waiting for a check worker, per principal
    (429 past it) and in all (503)."""

    structured_output_compile_timeout: float = 10.0  # seconds one grammar may take to compile
    structured_output_max_bytes: int = 256 * 2**10  # size of a schema, regex, grammar or choices
    structured_output_cache_size: int = 256  # compiled grammars kept (by grammar text)
    structured_output_max_waiting_compiles: int = 64  # per API server, all principals together
    structured_output_max_waiting_compiles_per_principal: int = 16
    # a JSON schema's objects get only the properties it names (xgrammar's strict default);
    # False: the JSON Schema letter (an unset additionalProperties allows any other property)
    structured_output_strict_properties: bool = True

    def __post_init__(self) -> None:
        if not self.structured_output_compile_timeout > 0:
            raise ValueError("--structured-output-compile-timeout must be positive, got "
                             f"{self.structured_output_compile_timeout}")
        if self.structured_output_max_bytes < 1:
            raise ValueError("--structured-output-max-bytes must be at least 1, got "
                             f"{self.structured_output_max_bytes}")
        if self.structured_output_cache_size < 0:
            raise ValueError("--structured-output-cache-size must be non-negative, got "
                             f"{self.structured_output_cache_size}")
        for name in ("structured_output_max_waiting_compiles",
                     "structured_output_max_waiting_compiles_per_principal"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be non-negative, got "
                                 f"{getattr(self, name)}")


KV_ROLES = ("prefill", "decode", "both")
KV_LOAD_FAILURE_POLICIES = ("recompute", "fail")


@dataclass(frozen=True)
class KvTransferConfig:
    """Disaggregated prefill and decode (docs/disaggregation.md): this rank's role, how long a
    prefill rank holds blocks for a pull, and what a decode rank does when a pull fails."""

    role: str = "both"
    lease_s: float = 30.0
    load_failure_policy: str = "recompute"

    def __post_init__(self) -> None:
        if self.role not in KV_ROLES:
            raise ValueError(f"--kv-role must be one of {', '.join(KV_ROLES)}, got {self.role!r}")
        if not self.lease_s > 0:
            raise ValueError(f"--kv-lease-s must be positive, got {self.lease_s}")
        if self.load_failure_policy not in KV_LOAD_FAILURE_POLICIES:
            raise ValueError("--kv-load-failure-policy must be recompute or fail, got "
                             f"{self.load_failure_policy!r}")


@dataclass(frozen=True)
class EngineConfig:
    """Everything one engine (one data-parallel rank) needs."""

    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    num_threads: int | None = None
    structured: StructuredOutputConfig = field(default_factory=StructuredOutputConfig)
    tensor_parallel_size: int = 1
    kv_transfer: KvTransferConfig = field(default_factory=KvTransferConfig)

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"--num-threads must be at least 1, got {self.num_threads}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"--tensor-parallel-size must be at least 1, got {self.tensor_parallel_size}")

    def with_kv_role(self, role: str) -> "EngineConfig":
        """This config for a rank of `role` (--prefill-ranks, --kv-role)."""
        if role == self.kv_transfer.role:
            return self
        return replace(self, kv_transfer=replace(self.kv_transfer, role=role))

    @property
    def threads(self) -> int:
        """CPU threads for torch in the whole rank: the flag, else every core this process may use."""
        return self.num_threads or len(os.sched_getaffinity(0))

    @property
    def threads_per_worker(self) -> int:
        """Each tensor-parallel worker's share of `threads` (at least one)."""
        return max(1, self.threads // self.tensor_parallel_size)

    @classmethod
    def from_kwargs(cls, model: str, **kwargs) -> "EngineConfig":
        """Build a config from flat keyword arguments (the `LLM(...)` and CLI shape)."""
        groups = {ModelConfig: {}, CacheConfig: {}, SchedulerConfig: {}, StructuredOutputConfig: {}}
        top, transfer = {}, {}
        for key, value in kwargs.items():
            if value is None:
                continue
            if key in _KV_TRANSFER_FLAGS:
                transfer[_KV_TRANSFER_FLAGS[key]] = value
                continue
            if key in ("kv_cache_memory", "structured_output_max_bytes"):
                value = parse_bytes(value)
            owner = next((g for g in groups if key in g.__dataclass_fields__), None)
            if owner is not None:
                groups[owner][key] = value
            elif key in cls.__dataclass_fields__:
                top[key] = value
            else:
                raise TypeError(f"unknown engine argument {key!r}")
        return cls(model=ModelConfig(model=model, **groups[ModelConfig]),
                   cache=CacheConfig(**groups[CacheConfig]),
                   scheduler=SchedulerConfig(**groups[SchedulerConfig]),
                   structured=StructuredOutputConfig(**groups[StructuredOutputConfig]),
                   kv_transfer=KvTransferConfig(**transfer), **top)


_KV_TRANSFER_FLAGS = {"kv_role": "role", "kv_lease_s": "lease_s", "kv_load_failure_policy": "load_failure_policy"}
