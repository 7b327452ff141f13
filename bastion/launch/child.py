"""Entry point of every launcher child: `python -m bastion.launch.child NAME`.

Reads its spec from stdin, answers the handshake on the original stdout, and exits as soon as
stdin reaches EOF (the launcher is gone, even if it was killed with SIGKILL).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import traceback
from typing import Callable

from bastion.config.engine import EngineConfig
from bastion.model.arch import ModelLoadError
from bastion.transport.child_pipe import (ApiServerSpec, ChildFailed, ControlWatch, EngineSpec,
                                       RankServerSpec, decode_spec, read_frame, write_frame)



def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "child"
    handshake_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr, never into the handshake
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # NOTE: API servers install their reload handler
    level = os.environ.get("BASTION_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level, format=f"{name} %(levelname)s %(name)s: %(message)s")
    stdin = os.fdopen(0, "rb", buffering=0)  # raw: the control thread reads it until exit
    payload = read_frame(stdin)
    if payload is None:
        sys.exit(1)
    spec = decode_spec(payload)
    if isinstance(spec, RankServerSpec):
        _rank_server(spec, stdin)
    control = ControlWatch(stdin)
    report = lambda message: write_frame(handshake_fd, message)  # noqa: E731
    try:
        if isinstance(spec, EngineSpec):
            _engine(spec, report)
        elif isinstance(spec, ApiServerSpec):
            from bastion.server.process import run_api_server
            run_api_server(spec, control, report)
    except Exception as exc:
        if not isinstance(exc, (ValueError, ModelLoadError, OSError)):
            traceback.print_exc()
        try:
            report(ChildFailed(f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        logging.shutdown()
        os._exit(1)


def _engine(spec: EngineSpec, report: Callable) -> None:
    from bastion.engine.process import run_engine

    device_rank = spec.index if spec.device_rank is None else spec.device_rank
    run_engine(_rank_device(spec.config, device_rank), spec.index, spec.ipc_dir, report,
               spec.internal, spec.keys)


def _rank_server(spec: RankServerSpec, stdin) -> None:
    """A supervisor's rank: a whole server. When the supervisor goes away (EOF, even after its
    SIGKILL) the rank drains and exits as if it got SIGTERM, so no accepted request is lost."""
    from bastion.launch.launcher import Launcher

    ControlWatch(stdin, on_eof=_supervisor_gone)
    try:
        code = Launcher(spec.config, f"rank-{spec.index}/", spec.index, spec.limits_dir).run()
    except ValueError as exc:  # e.g. its port is taken: the message names the flag
        print(f"bastion serve: error: rank {spec.index}: {exc}", file=sys.stderr, flush=True)
        code = 2
    logging.shutdown()
    sys.exit(code)


def _supervisor_gone() -> None:
    """Drain as on SIGTERM. The supervisor's end of our stderr is gone too: logs go to /dev/null,
    or a write to the broken pipe (ours, or a child's forwarded line) would stall the drain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    os.kill(os.getpid(), signal.SIGTERM)


def _rank_device(config: EngineConfig, index: int) -> EngineConfig:
    """With several GPUs, rank i takes GPU i (mod the count) unless a device was named."""
    if config.model.device not in ("auto", "cuda"):
        return config
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, device=f"cuda:{index % count}"))


if __name__ == "__main__":
    main()
