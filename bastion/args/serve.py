"""`bastion serve` flags (named as vLLM's where the meaning is the same) and their configs."""
from __future__ import annotations

import argparse
import os

from bastion.args.aliases import add_model_args, model_of
from bastion.args.disaggregation import (add_disaggregation_args, check_disaggregation, kv_role_of,
                                         with_kv_transfer)
from bastion.args.engine import add_engine_args, engine_config
from bastion.args.ray import add_ray_args, ray_config
from bastion.args.responses import add_responses_args, responses_store_config
from bastion.args.security import add_security_args, check_exposure, security_config
from bastion.args.supervisor import add_supervisor_args, supervisor_config
from bastion.config.deployment import InternalConfig, ParallelConfig
from bastion.config.engine import EngineConfig, parse_bytes
from bastion.config.serve import ServeConfig
from bastion.config.server import REASONING_PARSERS, TOOL_CALL_PARSERS, ServerConfig
from bastion.launch.net import HOST_IP_ENV, node_address


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    g = parser.add_argument_group("server")
    g.add_argument("--log-level", default=argparse.SUPPRESS,
                   choices=["debug", "info", "warning", "error"], help="logging level (default warning)")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port to listen on (0 picks one; the "
                   "ready line shows it)")
    g.add_argument("--served-model-name", nargs="+", default=None,
                   help="model name(s) clients use and /v1/models lists (default: the model argument "
                        "as given, e.g. /models/m, as vLLM and SGLang name it; the folder's or GGUF "
                        "file's name, m, is accepted too; bastion-demo for the demo model)")
    g.add_argument("--api-server-count", type=int, default=1,
                   help="API-server processes sharing the listening socket")
    g.add_argument("--max-request-body-bytes", type=parse_bytes, default=4 * 2**20,
                   help="larger request bodies get 413 (default 4MiB)")
    g.add_argument("--max-request-header-bytes", type=parse_bytes, default=32 * 2**10,
                   help="larger request heads (request line and headers, however they arrive) get 431 "
                        "(default 32KiB, nginx's 4 x 8k large_client_header_buffers)")
    g.add_argument("--http-header-timeout", type=float, default=10.0,
                   help="seconds a connection has to send a whole request head, from accept (also the "
                        "TLS handshake's limit) or from its first byte after a keep-alive wait; then it "
                        "is closed (default 10; nginx client_header_timeout)")
    g.add_argument("--max-connections", type=int, default=4096,
                   help="open connections per API server; past it a new one gets 503 and is closed "
                        "(default 4096; nginx worker_connections)")
    g.add_argument("--max-queued-requests", type=int, default=None,
                   help="503 (with Retry-After) while more requests than this wait for an engine slot "
                        "(beyond -dp x --max-num-seqs running), across all API servers; waiting requests "
                        "are admitted round-robin by tenant (default: no bound)")
    g.add_argument("--max-batched-prompts", type=int, default=None,
                   help="prompts one /v1/completions request may batch (a list of strings or of "
                        "token-id lists); more get 400. Each prompt is admitted as its own request, "
                        "so the default is --max-num-seqs: one batch at most fills one rank's "
                        "running sequences and cannot crowd the queue past what one rank runs")
    g.add_argument("--max-logprobs", type=int, default=20,
                   help="the most top alternatives a request may ask per prompt position "
                        "(prompt_logprobs; logprobs with echo); more get 400 (default 20, as vLLM)")
    g.add_argument("--tool-call-parser", choices=TOOL_CALL_PARSERS, default=None,
                   help="how tool calls are read from answers to tool_choice \"auto\": hermes "
                        "(<tool_call>{json}</tool_call>, Hermes and Qwen), llama3_json (the message "
                        "is {\"name\", \"parameters\"}), mistral ([TOOL_CALLS] [...]); default: "
                        "picked by the markers in the model's chat template, hermes when it has none")
    g.add_argument("--reasoning-parser", type=_reasoning_parser, choices=REASONING_PARSERS, default="auto",
                   help="how a model's thinking (<think>...</think>) is returned apart from its answer, "
                        "as reasoning_content: qwen3, deepseek_r1 (or SGLang's deepseek-r1); auto "
                        "(default) picks one when the chat template has </think> (deepseek_r1 for "
                        "DeepSeek's templates, else qwen3) and none otherwise; none leaves the "
                        "thinking in content")
    g.add_argument("--enable-auto-tool-choice", action="store_true",
                   help="accepted for vLLM's command lines: tool_choice \"auto\" is always on")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests may take to finish after SIGTERM/SIGINT")
    g.add_argument("--engine-startup-timeout", type=float, default=600.0,
                   help="seconds an engine may take to load before the launch fails")
    p = parser.add_argument_group("parallel")
    p.add_argument("--data-parallel-size", "-dp", "--dp", "--dp-size", type=int, default=1,
                   help="engine ranks (model replicas); each gets its share of CPU threads or its own GPU")
    p.add_argument("--max-rank-restarts", type=int, default=5,
                   help="restarts of a dead rank (an engine rank, or a whole rank under the supervisor) "
                        "within --rank-restart-window-s before it is failed (backoff 1 s doubling to "
                        "60 s); 0 never restarts")
    p.add_argument("--rank-restart-window-s", type=float, default=600.0,
                   help="the window --max-rank-restarts counts in (seconds)")
    p.add_argument("--data-parallel-size-local", "-dpl", type=int, default=None,
                   help="ranks on this node when they span nodes (default: all of them)")
    p.add_argument("--data-parallel-start-rank", "-dpr", type=int, default=0,
                   help="the first rank on this node (--headless nodes, and supervisor nodes of "
                        "--data-parallel-multi-port-external-lb)")
    p.add_argument("--data-parallel-address", "-dpa", default=None,
                   help="the head's address: where --headless nodes register (default on the head: "
                        "$BASTION_HOST_IP)")
    p.add_argument("--data-parallel-rpc-port", "-dpp", type=int, default=29550,
                   help="the head's registration port (CurveZMQ, keys from --internal-secret-file)")
    p.add_argument("--headless", action="store_true",
                   help="run this node's engine ranks only, registered with the head's API servers")
    p.add_argument("--internal-transport", choices=["ipc", "tcp"], default=None,
                   help="sockets between bastion's processes: ipc in a private 0700 directory "
                        "(default on one node), or TCP on --internal-host with CurveZMQ (always "
                        "when ranks span nodes)")
    p.add_argument("--internal-host", default=None,
                   help="address internal TCP listeners bind (default $BASTION_HOST_IP, else on the "
                        "head --data-parallel-address, on a headless node its address toward the "
                        "head, else 127.0.0.1)")
    p.add_argument("--internal-encryption", choices=["on", "off"], default="on",
                   help="CurveZMQ on internal TCP sockets; off only to measure its cost")
    p.add_argument("--internal-secret-file", default=None,
                   help="derive the internal CurveZMQ keys from this secret (>= 32 bytes, the same "
                        "file on every node) instead of making random ones per launch")
    add_responses_args(parser)
    add_disaggregation_args(parser)
    add_ray_args(parser)
    add_supervisor_args(parser)
    add_security_args(parser)
    add_engine_args(parser)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """Build and validate every config; ValueError names the offending flag."""
    from bastion.model.demo import default_model_path

    given = model_of(args)
    model = given or str(default_model_path())
    _check_gguf(model)
    engine = with_kv_transfer(engine_config(model, args), args)
    _check_tensor_parallel(engine)
    parallel = ParallelConfig(args.data_parallel_size, args.api_server_count, args.max_rank_restarts,
                              args.rank_restart_window_s, args.data_parallel_size_local,
                              args.data_parallel_start_rank, args.data_parallel_address or
                              (os.environ.get(HOST_IP_ENV) if args.data_parallel_size_local else None),
                              args.data_parallel_rpc_port, args.headless, args.prefill_ranks, kv_role_of(args))
    names, aliases = served_names(given, args.served_model_name)
    server = ServerConfig(host=args.host, port=args.port, served_model_names=names, model_aliases=aliases,
                          max_request_body_bytes=args.max_request_body_bytes,
                          max_request_header_bytes=args.max_request_header_bytes,
                          http_header_timeout=args.http_header_timeout,
                          max_connections=args.max_connections,
                          max_queued_requests=args.max_queued_requests,
                          max_batched_prompts=engine.scheduler.max_num_seqs if args.max_batched_prompts is None
                          else args.max_batched_prompts, max_logprobs=args.max_logprobs,
                          shutdown_timeout=args.shutdown_timeout, log_level=args.log_level,
                          structured=engine.structured, tool_call_parser=args.tool_call_parser,
                          reasoning_parser=args.reasoning_parser,
                          responses_store=responses_store_config(args))
    if args.engine_startup_timeout <= 0:
        raise ValueError(f"--engine-startup-timeout must be positive, got {args.engine_startup_timeout}")
    security = security_config(args)
    check_exposure(server.host, security)
    supervisor = supervisor_config(args)  # NOTE: first, so a clash of modes is the error shown
    parallel.check_start_rank(supervised=supervisor is not None)
    ray = ray_config(args)
    check_disaggregation(parallel.prefill_ranks, parallel.kv_role, parallel.data_parallel_size,
                         engine.tensor_parallel_size, parallel.multi_node, ray is not None, supervisor is not None,
                         _on_cuda(engine))
    internal = ray_internal_config(args) if ray is not None else \
        internal_config(args, parallel, supervised=supervisor is not None)
    return ServeConfig(model, engine, parallel, server, args.engine_startup_timeout, security, internal,
                       supervisor, ray)


def _reasoning_parser(name: str) -> str:
    """SGLang's spelling `deepseek-r1` as vLLM's `deepseek_r1`."""
    return name.replace("-", "_")


def ray_internal_config(args: argparse.Namespace) -> InternalConfig:
    """Ray ranks may be on any node: TCP with CurveZMQ, keys made by each engine actor. The host
    is where the API servers listen; it is settled once the driver has joined the cluster."""
    if (args.internal_transport or "tcp") != "tcp":
        raise ValueError("Ray ranks talk over TCP: drop --internal-transport ipc")
    if args.internal_encryption != "on":
        raise ValueError("Ray ranks need --internal-encryption on")
    if args.internal_secret_file:
        raise ValueError("--internal-secret-file is not used with --data-parallel-backend ray: each "
                         "engine actor makes its own keypair on its node, so no key crosses Ray")
    return InternalConfig("tcp", args.internal_host or "127.0.0.1", True)


def internal_config(args: argparse.Namespace, parallel: ParallelConfig,
                    supervised: bool = False) -> InternalConfig:
    """Where and how bastion's own processes talk; ranks on several nodes need TCP, CurveZMQ and
    keys derived from a secret every node holds. Supervised ranks are whole servers on their
    own node (each node's supervisor runs its ranks), so their channels stay local."""
    multi_node = parallel.multi_node and not supervised
    transport = args.internal_transport or ("tcp" if multi_node else "ipc")
    if multi_node:
        if transport != "tcp":
            raise ValueError("ranks on several nodes talk over TCP: drop --internal-transport ipc")
        if args.internal_encryption != "on":
            raise ValueError("ranks on several nodes need --internal-encryption on")
        if not args.internal_secret_file:
            raise ValueError("ranks on several nodes need --internal-secret-file (the same file on every "
                             "node): their CurveZMQ keys derive from it")
        if not parallel.data_parallel_address:
            raise ValueError(f"the head of ranks on several nodes needs --data-parallel-address (or "
                             f"{HOST_IP_ENV}): the address where other nodes register")
    host = args.internal_host
    if host is None:
        toward = parallel.data_parallel_address if multi_node else None
        host = (os.environ.get(HOST_IP_ENV) or toward) if multi_node and not parallel.headless \
            else node_address(toward)
    internal = InternalConfig(transport, host, args.internal_encryption == "on", args.internal_secret_file)
    if internal.secret_file:
        from bastion.transport.channel import read_internal_secret
        read_internal_secret(internal.secret_file)
    return internal


def _check_gguf(model: str) -> None:
    """A GGUF file is checked here, before anything starts (metadata, tensor names, types and
    shapes; no weights are read), so a bad one is a ModelLoadError (a ValueError: exit 2)."""
    from bastion.model.gguf.reader import is_gguf

    if is_gguf(model):
        from bastion.model.gguf.weights import check_gguf
        check_gguf(model)


def _check_tensor_parallel(engine: EngineConfig) -> None:
    """Refuse, before anything starts (exit 2), a --tensor-parallel-size this model or machine
    cannot take: shapes that do not split, a GGUF file, more workers than cores or devices."""
    size = engine.tensor_parallel_size
    if size == 1:
        return
    import torch

    from bastion.model.arch import read_arch_config
    from bastion.model.gguf.reader import is_gguf
    from bastion.model.parallel.plan import TensorParallel

    model = engine.model.model
    if is_gguf(model):
        raise ValueError(f"--tensor-parallel-size {size}: GGUF files are not sharded; serve a "
                         "safetensors folder")
    TensorParallel(size).check(read_arch_config(model))
    device = engine.model.device
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        if size > torch.cuda.device_count():
            raise ValueError(f"--tensor-parallel-size {size} needs {size} CUDA devices; "
                             f"{torch.cuda.device_count()} are visible")
        return
    cores = len(os.sched_getaffinity(0))
    if size > cores:
        raise ValueError(f"--tensor-parallel-size {size} needs a CPU core per worker; this "
                         f"process may use {cores}")


def served_names(given: str | None, flag: list[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The served names and their aliases: --served-model-name's names, no alias; else the model
    argument as given (vLLM's and SGLang's default: "/models/m"), with the folder's or file's
    last part ("m", bastion's name before) accepted too; "bastion-demo" for the demo model."""
    from pathlib import Path

    if flag:
        return tuple(flag), ()
    if given is None:
        return ("bastion-demo",), ()
    last = Path(given).resolve().name
    return (given,), (() if last == given else (last,))


def _on_cuda(engine: EngineConfig) -> bool:
    """Whether the engines will run on CUDA (`--device auto` picks it when there is one)."""
    device = engine.model.device
    if device != "auto" or engine.tensor_parallel_size == 1:
        return device.startswith("cuda")
    import torch
    return torch.cuda.is_available()
