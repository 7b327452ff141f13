"""Flags of the multi-port external load-balancing mode (named as vLLM's where they exist)."""
from __future__ import annotations

import argparse

from bastion.config.deployment import SUPERVISOR_MODE_FLAG, SupervisorConfig

# NOTE: modes that place ranks another way; none may be combined with the supervisor's.
# Each is (argparse dest, the value that selects it, the flag); a dest the parser lacks is skipped.
OTHER_LB_MODES = (("headless", True, "--headless"),
                  ("data_parallel_backend", "ray", "--data-parallel-backend ray"))

# argparse dest (the flag, spelled with dashes) -> SupervisorConfig field
_FIELDS = {
    "data_parallel_supervisor_port": "port",
    "dp_supervisor_probe_interval_s": "probe_interval_s",
    "dp_supervisor_probe_timeout_s": "probe_timeout_s",
    "dp_supervisor_probe_failure_threshold": "probe_failure_threshold",
    "dp_supervisor_startup_timeout_s": "startup_timeout_s",
    "min_ready_ranks": "min_ready_ranks",
    "ssl_client_certfile": "client_certfile",
    "ssl_client_keyfile": "client_keyfile",
    "audit_log_skip_probes": "audit_skip_probes",
}


def add_supervisor_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "multi-port external load balancing",
        "one full server per data-parallel rank on --port + rank, for your own load balancer; a "
        "supervisor starts them, probes them (verified TLS), restarts them and answers probes")
    g.add_argument(SUPERVISOR_MODE_FLAG, action="store_true",
                   help="serve each of the -dp ranks on its own port (--port + rank) under a supervisor")
    g.add_argument("--data-parallel-supervisor-port", type=int, default=None,
                   help="the supervisor's port for /health, /ready and /ranks (default 9256; 0 picks "
                        "one, shown in the ready line)")
    g.add_argument("--dp-supervisor-probe-interval-s", type=float, default=None,
                   help="seconds between health probes of each rank (default 5)")
    g.add_argument("--dp-supervisor-probe-timeout-s", type=float, default=None,
                   help="seconds one probe may take (default 5)")
    g.add_argument("--dp-supervisor-probe-failure-threshold", type=int, default=None,
                   help="consecutive failed probes that make a ready rank unhealthy (default 3)")
    g.add_argument("--dp-supervisor-startup-timeout-s", type=float, default=None,
                   help="seconds each rank start may take to pass a probe (default 600)")
    g.add_argument("--min-ready-ranks", type=int, default=None,
                   help="ranks that must pass their probes for /ready to answer 200 (default all); "
                        "fewer left alive stops the supervisor")
    g.add_argument("--ssl-client-certfile", default=None,
                   help="client certificate the probes present under --ssl-cert-reqs required "
                        "(default --ssl-certfile, which must then allow clientAuth)")
    g.add_argument("--ssl-client-keyfile", default=None,
                   help="unencrypted key of --ssl-client-certfile (default --ssl-keyfile)")
    g.add_argument("--audit-log-skip-probes", action="store_true", default=None,
                   help="the ranks write no --audit-log line for the supervisor's own health probes "
                        "(recognised by a token only the supervisor holds; like Envoy's "
                        "not_health_check_filter); every client request is still written")


def supervisor_config(args: argparse.Namespace) -> SupervisorConfig | None:
    """The supervisor's config in that mode, else None; ValueError names a misplaced flag."""
    given = {dest: getattr(args, dest) for dest in _FIELDS if getattr(args, dest, None) is not None}
    if not args.data_parallel_multi_port_external_lb:
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise ValueError(f"{flag} needs {SUPERVISOR_MODE_FLAG}")
        return None
    for dest, value, flag in OTHER_LB_MODES:
        if getattr(args, dest, None) == value:
            raise ValueError(f"{SUPERVISOR_MODE_FLAG} cannot be combined with {flag}: choose one "
                             "load-balancing mode")
    return SupervisorConfig(**{_FIELDS[dest]: value for dest, value in given.items()})
