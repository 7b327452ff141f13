"""The root of the config tree: everything `bastion serve` runs."""
from __future__ import annotations

from dataclasses import dataclass

from bastion.config.deployment import (InternalConfig, ParallelConfig, RayConfig,
                                       SupervisorConfig)
from bastion.config.engine import EngineConfig
from bastion.config.security import SecurityConfig
from bastion.config.server import ServerConfig


@dataclass(frozen=True)
class ServeConfig:
    """Everything `bastion serve` runs, validated before any process starts."""

    model: str
    engine: EngineConfig
    parallel: ParallelConfig
    server: ServerConfig
    engine_startup_timeout: float
    security: SecurityConfig
    internal: InternalConfig = InternalConfig()
    supervisor: SupervisorConfig | None = None  # the multi-port external load-balancing mode
    ray: RayConfig | None = None  # the Ray backend

    def __post_init__(self) -> None:
        if self.supervisor is not None:
            self.supervisor.check(self.parallel, self.server, self.security)
        if self.ray is not None:
            self.ray.check(self.parallel, self.engine.tensor_parallel_size)
        self.parallel.check_start_rank(supervised=self.supervisor is not None)

    @property
    def ready_ranks_needed(self) -> int:
        """Ranks that must pass their probes for the supervisor to be ready."""
        assert self.supervisor is not None
        return self.supervisor.min_ready_ranks or self.parallel.local_size
