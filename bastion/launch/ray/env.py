"""Which of the driver's environment variables Ray engine actors get (`runtime_env` env_vars).

An actor runs on another node, in the environment of that node's raylet. From the driver it
gets only what describes the deployment, never what describes the driver's own host:

* propagated: names matching `PROPAGATE` (`BASTION_*`, `HF_*`, `OMP_NUM_THREADS`, `NCCL_*`, ...);
* never, even when they match: `WORKER_SPECIFIC` (the driver's host address, its device
  visibility and its network interfaces: each node has its own) and every secret (`is_secret`,
  launch/environment.py: the API key, tokens, passwords, keys; secrets reach engines only over
  the encrypted channel).

Users extend both lists with `--ray-env-include` / `--ray-env-exclude` or the comma-separated
`BASTION_RAY_ENV_INCLUDE` / `BASTION_RAY_ENV_EXCLUDE`; a pattern is a name or a prefix ending in
`*`. Including a secret is refused. Excludes win over includes.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping

from bastion.launch.environment import is_secret

INCLUDE_ENV = "BASTION_RAY_ENV_INCLUDE"
EXCLUDE_ENV = "BASTION_RAY_ENV_EXCLUDE"

PROPAGATE = ("BASTION_*", "HF_*", "HUGGINGFACE_*", "TRANSFORMERS_*", "TOKENIZERS_*", "TORCH_*",
             "PYTORCH_*", "NCCL_*", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

WORKER_SPECIFIC = (
    "BASTION_HOST_IP",  # each node binds its own address
    "BASTION_LOG_LEVEL",  # the launcher sets it per child
    INCLUDE_ENV, EXCLUDE_ENV,  # the driver's own settings
    "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",  # Ray assigns devices
    "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME",  # host interfaces
)

def split_patterns(values: Iterable[str]) -> tuple[str, ...]:
    """Flag values and env-var lists, comma-separated, blanks dropped."""
    return tuple(p.strip() for value in values for p in value.split(",") if p.strip())


def check_includes(patterns: Iterable[str], source: str) -> None:
    """Refuse an include that names a secret; ValueError names `source` (the flag or variable)."""
    for pattern in patterns:
        if is_secret(pattern.rstrip("*")):
            raise ValueError(f"{source}: {pattern!r} looks like a secret; secrets never travel in Ray "
                             "actor environments (engines get their keys over the encrypted channel)")


def actor_environment(environ: Mapping[str, str], include: Iterable[str] = (),
                      exclude: Iterable[str] = ()) -> dict[str, str]:
    """The variables of `environ` that engine actors get (see the module docstring)."""
    wanted = (*PROPAGATE, *include)
    unwanted = (*WORKER_SPECIFIC, *exclude)
    return {name: value for name, value in environ.items()
            if _matches(name, wanted) and not _matches(name, unwanted) and not is_secret(name)}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
