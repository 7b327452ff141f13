"""`bastion serve` flags (named as vLLM's where the meaning is the same) and their configs."""
from __future__ import annotations

import argparse
import os

from bastion.config import InternalConfig, ParallelConfig, ServeConfig, ServerConfig, parse_bytes
from bastion.engine_args import add_engine_args, engine_config
from bastion.launch.supervisor_args import add_supervisor_args, supervisor_config
from bastion.security.args import add_security_args, check_exposure, security_config


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None,
                        help="local model folder (default: the bundled demo model)")
    g = parser.add_argument_group("server")
    g.add_argument("--log-level", default=argparse.SUPPRESS,
                   choices=["debug", "info", "warning", "error"], help="logging level (default warning)")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port to listen on (0 picks one; the "
                   "ready line shows it)")
    g.add_argument("--served-model-name", nargs="+", default=None,
                   help="model name(s) clients use (default: the model folder's name)")
    g.add_argument("--api-server-count", type=int, default=1,
                   help="API-server processes sharing the listening socket")
    g.add_argument("--max-request-body-bytes", type=parse_bytes, default=4 * 2**20,
                   help="larger request bodies get 413 (default 4MiB)")
    g.add_argument("--max-queued-requests", type=int, default=None,
                   help="503 while more requests than this wait for an engine (default: no bound)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests may take to finish after SIGTERM/SIGINT")
    g.add_argument("--engine-startup-timeout", type=float, default=600.0,
                   help="seconds an engine may take to load before the launch fails")
    p = parser.add_argument_group("parallel")
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1,
                   help="engine ranks (model replicas); each gets its share of CPU threads or its own GPU")
    p.add_argument("--max-rank-restarts", type=int, default=5,
                   help="restarts of a dead rank (an engine rank, or a whole rank under the supervisor) "
                        "within --rank-restart-window-s before it is failed (backoff 1 s doubling to "
                        "60 s); 0 never restarts")
    p.add_argument("--rank-restart-window-s", type=float, default=600.0,
                   help="the window --max-rank-restarts counts in (seconds)")
    p.add_argument("--internal-transport", choices=["ipc", "tcp"], default="ipc",
                   help="sockets between bastion's processes: ipc in a private 0700 directory "
                        "(default), or TCP on --internal-host with CurveZMQ")
    p.add_argument("--internal-host", default=os.environ.get("BASTION_HOST_IP", "127.0.0.1"),
                   help="address internal TCP listeners bind (default $BASTION_HOST_IP, else 127.0.0.1)")
    p.add_argument("--internal-encryption", choices=["on", "off"], default="on",
                   help="CurveZMQ on internal TCP sockets; off only to measure its cost")
    p.add_argument("--internal-secret-file", default=None,
                   help="derive the internal CurveZMQ keys from this secret (>= 32 bytes, the same "
                        "file on every node) instead of making random ones per launch")
    add_supervisor_args(parser)
    add_security_args(parser)
    add_engine_args(parser)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """Build and validate every config; ValueError names the offending flag."""
    from bastion.model.demo import default_model_path

    model = args.model or str(default_model_path())
    engine = engine_config(model, args)
    parallel = ParallelConfig(args.data_parallel_size, args.api_server_count, args.max_rank_restarts,
                              args.rank_restart_window_s)
    names = tuple(args.served_model_name or [_default_name(model, args.model is None)])
    server = ServerConfig(host=args.host, port=args.port, served_model_names=names,
                          max_request_body_bytes=args.max_request_body_bytes,
                          max_queued_requests=args.max_queued_requests,
                          shutdown_timeout=args.shutdown_timeout, log_level=args.log_level)
    if args.engine_startup_timeout <= 0:
        raise ValueError(f"--engine-startup-timeout must be positive, got {args.engine_startup_timeout}")
    security = security_config(args)
    check_exposure(server.host, security)
    internal = InternalConfig(args.internal_transport, args.internal_host, args.internal_encryption == "on",
                              args.internal_secret_file)
    if internal.secret_file:
        from bastion.transport.channel import read_internal_secret
        read_internal_secret(internal.secret_file)
    return ServeConfig(model, engine, parallel, server, args.engine_startup_timeout, security, internal,
                       supervisor_config(args))


def _default_name(model: str, is_demo: bool) -> str:
    from pathlib import Path

    return "bastion-demo" if is_demo else Path(model).resolve().name
