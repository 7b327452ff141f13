"""Flags of the Ray backend (`--data-parallel-backend ray`, vLLM's name) and its config."""
from __future__ import annotations

import argparse
import importlib.util
import os

from bastion.config.deployment import RAY_BACKEND_FLAG, RAY_PLACEMENT_STRATEGIES, RayConfig
from bastion.launch.net import HOST_IP_ENV
from bastion.launch.ray.env import (EXCLUDE_ENV, INCLUDE_ENV, actor_environment, check_includes,
                                    split_patterns)


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "Ray backend", "every engine rank a Ray actor in its own placement group (needs bastion[ray])")
    g.add_argument("--data-parallel-backend", "-dpb", choices=["mp", "ray"], default="mp",
                   help="how engine ranks run: mp (processes on this node and --headless nodes) or "
                        "ray (actors on a Ray cluster)")
    g.add_argument("--ray-address", default=None,
                   help="the Ray cluster to join (default $RAY_ADDRESS, else a new local cluster on "
                        "$BASTION_HOST_IP or 127.0.0.2, loopback)")
    g.add_argument("--ray-placement-strategy", choices=RAY_PLACEMENT_STRATEGIES, default=None,
                   help="how ranks share nodes: pack (fill nodes first, default), spread (fewest "
                        "ranks per node) or strict-pack (all on one node)")
    g.add_argument("--ray-cpus-per-rank", type=float, default=None,
                   help="CPUs for each tensor-parallel worker of a rank: a rank's bundle holds -tp "
                        "times this (default 1); CPU engines use a thread per CPU of their bundle "
                        "unless --num-threads says otherwise")
    g.add_argument("--ray-gpus-per-rank", type=float, default=None,
                   help="GPUs for each tensor-parallel worker of a rank: a rank's bundle holds -tp "
                        "times this (default 1 when the cluster has GPUs, else 0)")
    g.add_argument("--ray-env-include", action="append", default=[], metavar="NAME[*]",
                   help=f"more driver variables actors get (comma-separated; a trailing * is a "
                        f"prefix; also ${INCLUDE_ENV}); secrets are refused")
    g.add_argument("--ray-env-exclude", action="append", default=[], metavar="NAME[*]",
                   help=f"driver variables actors must not get (also ${EXCLUDE_ENV})")


_RAY_ONLY = ("ray_address", "ray_placement_strategy", "ray_cpus_per_rank", "ray_gpus_per_rank")


def ray_config(args: argparse.Namespace) -> RayConfig | None:
    """The Ray backend's config, or None for mp; ValueError names the flag."""
    if args.data_parallel_backend != "ray":
        given = [d for d in _RAY_ONLY if getattr(args, d) is not None]
        given += [d for d in ("ray_env_include", "ray_env_exclude") if getattr(args, d)]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} needs {RAY_BACKEND_FLAG}")
        return None
    if importlib.util.find_spec("ray") is None:  # NOTE: found, not imported: ray is slow to import
        raise ValueError(f"{RAY_BACKEND_FLAG} needs Ray: pip install 'bastion[ray]'")
    include = split_patterns(args.ray_env_include)
    check_includes(include, "--ray-env-include")
    env_include = split_patterns([os.environ.get(INCLUDE_ENV, "")])
    check_includes(env_include, INCLUDE_ENV)
    exclude = split_patterns([*args.ray_env_exclude, os.environ.get(EXCLUDE_ENV, "")])
    env = actor_environment(os.environ, (*include, *env_include), exclude)
    optional = {"placement_strategy": args.ray_placement_strategy, "cpus_per_rank": args.ray_cpus_per_rank}
    return RayConfig(args.ray_address, gpus_per_rank=args.ray_gpus_per_rank,
                     env_vars=tuple(sorted(env.items())),
                     driver_host=args.internal_host or os.environ.get(HOST_IP_ENV) or None,
                     **{k: v for k, v in optional.items() if v is not None})
