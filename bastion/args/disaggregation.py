"""`bastion serve` flags of disaggregated prefill and decode (docs/disaggregation.md).

`--prefill-ranks K` makes ranks 0..K-1 prefill ranks and the rest decode ranks; `--kv-role`
(SGLang's `--disaggregation-mode`, whose `null` means both) gives every rank of this node one
role. The lease and the failure policy go into each engine's `KvTransferConfig`.
"""
from __future__ import annotations

import argparse
import dataclasses

from bastion.config.engine import KV_LOAD_FAILURE_POLICIES, KV_ROLES, EngineConfig, KvTransferConfig

_SGLANG_MODES = {"null": "both", "prefill": "prefill", "decode": "decode"}


def add_disaggregation_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "disaggregated prefill and decode",
        "prefill ranks compute prompts and first tokens; decode ranks pull the prompts' KV over an "
        "encrypted, authenticated channel and generate the rest")
    g.add_argument("--prefill-ranks", type=int, default=0, metavar="K",
                   help="ranks 0..K-1 are prefill ranks, the others decode ranks (0: every rank does "
                        "both, as without disaggregation)")
    g.add_argument("--kv-role", "--disaggregation-mode", dest="kv_role", default=None,
                   choices=[*KV_ROLES, "null"],
                   help="the role of every rank of this node instead (SGLang's --disaggregation-mode: "
                        "null means both)")
    g.add_argument("--kv-lease-s", type=float, default=30.0, metavar="SECONDS",
                   help="how long a prefill rank holds a prompt's KV blocks for a decode rank to pull "
                        "them; unpulled blocks are freed after it")
    g.add_argument("--kv-load-failure-policy", choices=KV_LOAD_FAILURE_POLICIES, default="recompute",
                   help="when a decode rank cannot pull a prompt's KV: recompute it there, or fail the "
                        "request with a 503")


def kv_role_of(args: argparse.Namespace) -> str | None:
    """`--kv-role` in bastion's words (None when not given)."""
    return None if args.kv_role is None else _SGLANG_MODES.get(args.kv_role, args.kv_role)


def with_kv_transfer(engine: EngineConfig, args: argparse.Namespace) -> EngineConfig:
    """The engine config with the lease and the failure policy (roles are set per rank)."""
    transfer = KvTransferConfig(lease_s=args.kv_lease_s, load_failure_policy=args.kv_load_failure_policy)
    return dataclasses.replace(engine, kv_transfer=transfer)


def check_disaggregation(prefill_ranks: int, kv_role: str | None, data_parallel_size: int,
                         tensor_parallel_size: int, multi_node: bool, ray: bool, supervised: bool,
                         cuda: bool = False) -> None:
    """ValueError naming the flag for a deployment that cannot disaggregate (yet)."""
    if kv_role not in (None, "both") and not multi_node:
        raise ValueError(f"--kv-role {kv_role} gives every rank of this node that role, which leaves no "
                         "rank for the other; use --prefill-ranks K on one node")
    if not prefill_ranks and kv_role in (None, "both"):
        return
    if prefill_ranks and data_parallel_size < 2:
        raise ValueError(f"--prefill-ranks {prefill_ranks} needs --data-parallel-size 2 or more "
                         "(prefill ranks and decode ranks)")
    if prefill_ranks and not 0 < prefill_ranks < data_parallel_size:
        raise ValueError(f"--prefill-ranks {prefill_ranks} must leave at least one of the "
                         f"--data-parallel-size {data_parallel_size} ranks for decoding (1 .. "
                         f"{data_parallel_size - 1})")
    if tensor_parallel_size > 1 and cuda:
        raise ValueError("disaggregated prefill and decode with --tensor-parallel-size > 1 runs on CPU only "
                         "for now (docs/disaggregation.md)")
    if supervised:
        raise ValueError("disaggregated prefill and decode needs one set of API servers in front of every "
                         "rank; --data-parallel-multi-port-external-lb gives each rank its own "
                         "(docs/disaggregation.md)")
    if ray and kv_role not in (None, "both"):
        raise ValueError("with --data-parallel-backend ray give the roles with --prefill-ranks K")
