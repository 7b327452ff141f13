"""Which Ray node each rank's placement group goes to: pure planning over the nodes' resources.

Every rank asks for the same bundle: its `RankNeed`, the CPUs and GPUs of all its
tensor-parallel workers (`--ray-cpus-per-rank` and `--ray-gpus-per-rank` are per worker; with
`-tp N` a rank's one bundle holds N times each, so its workers run on one node and within what
Ray reserved). The strategy decides how ranks share nodes:

* `pack`: fill the node with the most room first (fewest nodes, Ray's own PACK across groups);
* `spread`: put each rank on the node that holds the fewest ranks (then the most room);
* `strict-pack`: every rank on one node, or no placement at all.

The plan pins each group to its node (a tiny share of the node's `node:IP` resource), so the
strategy holds across groups and a restarted rank goes where the strategy says among the nodes
alive now. `NoFit` says what was asked and what each node has.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NODE_PIN = 0.001  # of the `node:IP` resource: pins a bundle to that node


class NoFit(RuntimeError):
    """The cluster cannot hold the ranks; the message says what was asked and what exists."""


@dataclass(frozen=True)
class RankNeed:
    """What one rank asks of its node: `workers` tensor-parallel workers (-tp), each
    `cpus_per_worker` CPUs and `gpus_per_worker` GPUs."""

    cpus_per_worker: float
    gpus_per_worker: float
    workers: int = 1

    @property
    def cpus(self) -> float:
        return self.cpus_per_worker * self.workers

    @property
    def gpus(self) -> float:
        return self.gpus_per_worker * self.workers

    @property
    def threads(self) -> int:
        """CPU threads of the rank's engine (all its workers): one per CPU of its bundle, at least one."""
        return max(1, int(self.cpus + 1e-9))


@dataclass
class Node:
    """One alive Ray node: its address, its total resources, and the ranks planned on it."""

    ip: str
    cpus: float
    gpus: float
    ranks: list[int] = field(default_factory=list)

    def room(self, need: RankNeed) -> int:
        """How many more ranks of `need` fit, after the ranks already here."""
        free_cpus = self.cpus - len(self.ranks) * need.cpus
        free_gpus = self.gpus - len(self.ranks) * need.gpus
        fits = [int(free_cpus / need.cpus + 1e-9)]
        if need.gpus > 0:
            fits.append(int(free_gpus / need.gpus + 1e-9))
        return max(0, min(fits))


def bundle(need: RankNeed, ip: str) -> dict[str, float]:
    """One rank's placement-group bundle (all its workers), pinned to the node at `ip`."""
    wanted = {"CPU": need.cpus, f"node:{ip}": NODE_PIN}
    if need.gpus > 0:
        wanted["GPU"] = need.gpus
    return wanted


def nodes_from_ray(ray_nodes: list[dict]) -> list[Node]:
    """`ray.nodes()` -> the alive nodes, in a stable order."""
    alive = [Node(n["NodeManagerAddress"], n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
             for n in ray_nodes if n.get("Alive")]
    return sorted(alive, key=lambda node: node.ip)


def place(ranks: list[int], nodes: list[Node], need: RankNeed, strategy: str) -> dict[int, str]:
    """rank -> node IP for `ranks`, given `nodes` (whose `ranks` already hold placed ranks).

    Mutates `nodes` (adds the new ranks). Raises NoFit when they cannot all be placed.
    """
    if strategy == "strict-pack":
        return _strict_pack(ranks, nodes, need)
    plan = {}
    for rank in ranks:
        fitting = [node for node in nodes if node.room(need) > 0]
        if not fitting:
            raise NoFit(_describe(len(ranks), nodes, need, strategy))
        if strategy == "spread":
            chosen = min(fitting, key=lambda node: (len(node.ranks), -node.room(need)))
        else:  # pack: keep filling the node that already has ranks, then the roomiest
            chosen = min(fitting, key=lambda node: (-len(node.ranks), -node.room(need)))
        chosen.ranks.append(rank)
        plan[rank] = chosen.ip
    return plan


def _strict_pack(ranks: list[int], nodes: list[Node], need: RankNeed) -> dict[int, str]:
    holding = [node for node in nodes if node.ranks]
    candidates = holding if holding else nodes  # NOTE: a restarted rank joins the others' node
    for node in sorted(candidates, key=lambda n: -n.room(need)):
        if node.room(need) >= len(ranks):
            node.ranks.extend(ranks)
            return {rank: node.ip for rank in ranks}
    raise NoFit(_describe(len(ranks), nodes, need, "strict-pack"))


def _describe(count: int, nodes: list[Node], need: RankNeed, strategy: str) -> str:
    asked = f"{count} rank{'s' * (count > 1)} of {{CPU: {need.cpus:g}, GPU: {need.gpus:g}}} each"
    if need.workers > 1:
        asked += (f" ({need.workers} tensor-parallel workers of {{CPU: {need.cpus_per_worker:g}, "
                  f"GPU: {need.gpus_per_worker:g}}})")
    have = "; ".join(f"{n.ip}: CPU {n.cpus:g}, GPU {n.gpus:g}"
                     + (f" (ranks {', '.join(map(str, n.ranks))} already there)" if n.ranks else "")
                     for n in nodes) or "no alive nodes"
    return (f"the Ray cluster cannot fit {asked} with --ray-placement-strategy {strategy}; it has "
            f"{have}. Add nodes, lower --ray-cpus-per-rank/--ray-gpus-per-rank, -tp or -dp, or pick "
            "another strategy")
