"""How a deployment is laid out: data-parallel ranks and nodes, the internal channels, the Ray
backend and the multi-port supervisor. Checks across flags name the flag."""
from __future__ import annotations

from dataclasses import dataclass

from bastion.config.security import SecurityConfig
from bastion.config.server import ServerConfig


@dataclass(frozen=True)
class ParallelConfig:
    """How many engine ranks and API-server processes one server runs, and, when the ranks span
    nodes, which of them run on this node (`start_rank` .. `start_rank + local_size - 1`)."""

    data_parallel_size: int = 1
    api_server_count: int = 1
    max_rank_restarts: int = 5
    rank_restart_window_s: float = 600.0
    data_parallel_size_local: int | None = None  # None: every rank from the start rank on
    data_parallel_start_rank: int = 0
    data_parallel_address: str | None = None  # the head's address, where nodes register
    data_parallel_rpc_port: int = 29550
    headless: bool = False  # engines only; they register with the head
    prefill_ranks: int = 0  # disaggregated serving: ranks 0..K-1 prefill, the rest decode
    kv_role: str | None = None  # or every rank of this node in this role

    def kv_role_of(self, rank: int) -> str:
        """Rank `rank`'s --kv-role: prefill, decode or both."""
        if self.prefill_ranks:
            return "prefill" if rank < self.prefill_ranks else "decode"
        return self.kv_role or "both"

    @property
    def local_size(self) -> int:
        if self.data_parallel_size_local is not None:
            return self.data_parallel_size_local
        return self.data_parallel_size - self.data_parallel_start_rank

    @property
    def multi_node(self) -> bool:
        """Whether some ranks run on other nodes (this is the head) or this node is headless."""
        return self.headless or self.local_size < self.data_parallel_size

    def __post_init__(self) -> None:
        if self.max_rank_restarts < 0:
            raise ValueError(f"--max-rank-restarts must be non-negative, got {self.max_rank_restarts}")
        if self.rank_restart_window_s <= 0:
            raise ValueError(f"--rank-restart-window-s must be positive, got {self.rank_restart_window_s}")
        if self.data_parallel_size < 1:
            raise ValueError(f"--data-parallel-size must be at least 1, got {self.data_parallel_size}")
        if self.api_server_count < 1:
            raise ValueError(f"--api-server-count must be at least 1, got {self.api_server_count}")
        self._check_nodes()

    def check_start_rank(self, supervised: bool) -> None:
        """A nonzero start rank belongs to a node that is not the head: a --headless one, or one
        node's supervisor in the multi-port mode."""
        start = self.data_parallel_start_rank
        if self.multi_node and not self.headless and start != 0 and not supervised:
            raise ValueError(f"--data-parallel-start-rank {start} is for --headless nodes and nodes of "
                             "--data-parallel-multi-port-external-lb: the head serves ranks 0 .. "
                             "--data-parallel-size-local - 1")

    def _check_nodes(self) -> None:
        n, start, local = self.data_parallel_size, self.data_parallel_start_rank, self.local_size
        if start < 0:
            raise ValueError(f"--data-parallel-start-rank must be non-negative, got {start}")
        if local < 1:
            raise ValueError(f"--data-parallel-size-local must be at least 1, got {local}")
        if start + local > n:
            raise ValueError(f"--data-parallel-start-rank {start} + --data-parallel-size-local {local} is "
                             f"more than --data-parallel-size {n}: this node's ranks would be "
                             f"{start}..{start + local - 1}, and the last rank is {n - 1}")
        if not 1 <= self.data_parallel_rpc_port <= 65535:
            raise ValueError(f"--data-parallel-rpc-port must be in [1, 65535], got {self.data_parallel_rpc_port}")
        if self.headless and not self.data_parallel_address:
            raise ValueError("--headless needs --data-parallel-address (the head's address, where this "
                             "node's engines register)")


INTERNAL_TRANSPORTS = ("ipc", "tcp")


@dataclass(frozen=True)
class InternalConfig:
    """Sockets between bastion's own processes: ipc in a private 0700 directory, or TCP on the
    internal host with CurveZMQ (`encryption`; off only to measure its cost)."""

    transport: str = "ipc"
    host: str = "127.0.0.1"
    encryption: bool = True
    secret_file: str | None = None  # CURVE keys derive from it (multi-node); else random per launch

    def __post_init__(self) -> None:
        if self.transport not in INTERNAL_TRANSPORTS:
            raise ValueError(f"--internal-transport must be ipc or tcp, got {self.transport!r}")
        if not self.host:
            raise ValueError("--internal-host must not be empty")
        if self.secret_file and (self.transport != "tcp" or not self.encryption):
            raise ValueError("--internal-secret-file needs --internal-transport tcp with encryption on")


SUPERVISOR_MODE_FLAG = "--data-parallel-multi-port-external-lb"
RAY_BACKEND_FLAG = "--data-parallel-backend ray"
RAY_PLACEMENT_STRATEGIES = ("pack", "spread", "strict-pack")


@dataclass(frozen=True)
class RayConfig:
    """The Ray backend: every rank is an engine actor in its own placement group on a Ray cluster.

    `address` is the cluster (None: RAY_ADDRESS, else a local cluster). `cpus_per_rank` CPUs and
    `gpus_per_rank` GPUs (None: one when the cluster has GPUs and the device allows it) are for
    each tensor-parallel worker of a rank: a rank's one bundle holds -tp times each. `env_vars`
    is what actors get from the driver's environment, chosen by
    `launch.ray.env.actor_environment`; `driver_host` is where the API servers listen for engine outputs
    (None: the driver's address as Ray sees it).
    """

    address: str | None = None
    placement_strategy: str = "pack"
    cpus_per_rank: float = 1.0
    gpus_per_rank: float | None = None
    env_vars: tuple[tuple[str, str], ...] = ()
    driver_host: str | None = None

    def __post_init__(self) -> None:
        if self.placement_strategy not in RAY_PLACEMENT_STRATEGIES:
            raise ValueError(f"--ray-placement-strategy must be one of {', '.join(RAY_PLACEMENT_STRATEGIES)}, "
                             f"got {self.placement_strategy!r}")
        if not self.cpus_per_rank > 0:
            raise ValueError(f"--ray-cpus-per-rank must be positive, got {self.cpus_per_rank}")
        if self.gpus_per_rank is not None and self.gpus_per_rank < 0:
            raise ValueError(f"--ray-gpus-per-rank must be non-negative, got {self.gpus_per_rank}")

    def check(self, parallel: ParallelConfig, tensor_parallel_size: int = 1) -> None:
        """Ray places every rank itself: the flags that place ranks by hand do not apply. Each
        tensor-parallel worker has its own GPU, so a share of one cannot go to several."""
        gpus = self.gpus_per_rank
        if tensor_parallel_size > 1 and gpus is not None and gpus != int(gpus):
            raise ValueError(f"--ray-gpus-per-rank is per tensor-parallel worker and each has its own GPU: "
                             f"with -tp {tensor_parallel_size} it must be a whole number, got {gpus:g}")
        for flag, given in (("--headless", parallel.headless),
                            ("--data-parallel-size-local", parallel.data_parallel_size_local is not None),
                            ("--data-parallel-start-rank", parallel.data_parallel_start_rank != 0)):
            if given:
                raise ValueError(f"{RAY_BACKEND_FLAG} places every rank itself: drop {flag}")


@dataclass(frozen=True)
class SupervisorConfig:
    """The multi-port external load-balancing mode: one server per rank on `--port + rank`, and a
    supervisor on its own port that probes them (verified TLS), restarts them and answers probes."""

    port: int = 9256
    probe_interval_s: float = 5.0
    probe_timeout_s: float = 5.0
    probe_failure_threshold: int = 3
    startup_timeout_s: float = 600.0
    min_ready_ranks: int | None = None  # None: every rank
    client_certfile: str | None = None  # the probes' client certificate (mTLS); default the server pair
    client_keyfile: str | None = None
    audit_skip_probes: bool = False  # the ranks write no audit line for the supervisor's probes

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--data-parallel-supervisor-port must be in [0, 65535], got {self.port}")
        for flag, value in (("--dp-supervisor-probe-interval-s", self.probe_interval_s),
                            ("--dp-supervisor-probe-timeout-s", self.probe_timeout_s),
                            ("--dp-supervisor-startup-timeout-s", self.startup_timeout_s)):
            if not value > 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        if self.probe_failure_threshold < 1:
            raise ValueError("--dp-supervisor-probe-failure-threshold must be at least 1, "
                             f"got {self.probe_failure_threshold}")
        if bool(self.client_certfile) != bool(self.client_keyfile):
            raise ValueError("--ssl-client-certfile and --ssl-client-keyfile go together")

    def check(self, parallel: ParallelConfig, server: ServerConfig, security: SecurityConfig) -> None:
        """The checks across flags that this mode needs; ValueError names the flag. On several
        nodes each node's supervisor runs its own ranks (`-dpr` .. + `-dpl` - 1) on `--port` + the
        rank's place on the node."""
        if parallel.data_parallel_size < 2:
            raise ValueError(f"{SUPERVISOR_MODE_FLAG} needs --data-parallel-size (-dp) of at least 2, "
                             f"got {parallel.data_parallel_size}")
        ranks = parallel.local_size
        if parallel.api_server_count != 1:
            raise ValueError(f"--api-server-count must be 1 with {SUPERVISOR_MODE_FLAG} (each rank "
                             f"runs one API server on its own port), got {parallel.api_server_count}")
        if server.port == 0:
            raise ValueError(f"--port 0 cannot be used with {SUPERVISOR_MODE_FLAG}: rank i serves on "
                             "--port + i, a fixed port your load balancer targets")
        last = server.port + ranks - 1
        if last > 65535:
            raise ValueError(f"--port {server.port} + {ranks} ranks passes port 65535")
        if server.port <= self.port <= last:
            raise ValueError(f"--data-parallel-supervisor-port {self.port} falls in the rank ports "
                             f"{server.port}-{last} (--port + rank); pick a port outside them")
        if self.min_ready_ranks is not None and not 1 <= self.min_ready_ranks <= ranks:
            raise ValueError(f"--min-ready-ranks must be in [1, {ranks}] (the ranks on this node), "
                             f"got {self.min_ready_ranks}")
        if self.audit_skip_probes and not security.audit_log:
            raise ValueError("--audit-log-skip-probes needs --audit-log")
        if self.client_certfile and not security.tls.enabled:
            raise ValueError("--ssl-client-certfile needs --ssl-keyfile and --ssl-certfile (the "
                             "probes only present a client certificate over TLS)")
