"""`bastion bench serve --compare-ray`: what running the ranks as Ray actors costs.

One run, the same requests at the same concurrency against two deployments of the same model
in turn: `-dp N` as local processes, then `-dp N --data-parallel-backend ray` (the cluster of
`--ray-address`, else RAY_ADDRESS, else a local one the server starts). Prints output tokens/s
of each and their ratio (target: Ray at least 0.95 x local processes).
"""
from __future__ import annotations

import argparse

from bastion.bench.harness import bench_server
from bastion.bench.serve_load import measure_serving
from bastion.bench.workloads import PROMPT_VOCAB, workload


def compare_ray(args: argparse.Namespace) -> dict:
    from bastion.model.demo import default_model_path

    if args.ranks < 1:
        raise ValueError(f"--ranks must be at least 1, got {args.ranks}")
    model = args.model or str(default_model_path())
    reqs = workload(args, PROMPT_VOCAB)
    ray_flags = ("--data-parallel-backend", "ray", *(("--ray-address", args.ray_address) if args.ray_address else ()))
    variants = {"local": ("-dp", str(args.ranks)), "ray": ("-dp", str(args.ranks), *ray_flags)}
    result: dict = {"model": model, "ranks": args.ranks}
    for name, flags in variants.items():
        print(f"--- {args.ranks} ranks as {name} ({' '.join(flags)})")
        with bench_server(model, args, flags) as url:
            result[name] = measure_serving(url, args, reqs)
    local, ray = (result[name]["output_tokens_per_s"] for name in variants)
    result.update(local_output_tokens_per_s=local, ray_output_tokens_per_s=ray,
                  ray_over_local=round(ray / local, 3) if local else None,
                  errors=sum(result[name]["errors"] for name in variants))
    print(f"output tok/s: local processes {local:.1f}, Ray actors {ray:.1f}; ray/local {result['ray_over_local']}")
    return result
