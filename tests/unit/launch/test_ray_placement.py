"""Where ranks go on a Ray cluster: pack fills nodes, spread balances them, strict-pack keeps all on
one node; a restarted rank goes where the strategy says among the nodes left; a rank of N
tensor-parallel workers needs N workers' CPUs and GPUs in its one bundle, in the planning, in
NoFit's message and in its engine's threads; NoFit says what was asked and what each node has."""
from __future__ import annotations

import pytest

from bastion.launch.ray.placement import Node, NoFit, RankNeed, bundle, nodes_from_ray, place

ONE_CPU = RankNeed(cpus_per_worker=1, gpus_per_worker=0)


def cluster(*cpus: float, gpus: float = 0) -> list[Node]:
    return [Node(f"10.0.0.{i + 1}", c, gpus) for i, c in enumerate(cpus)]


def test_pack_fills_the_roomiest_node_first():
    assert place([0, 1, 2], cluster(2, 4), ONE_CPU, "pack") == {0: "10.0.0.2", 1: "10.0.0.2", 2: "10.0.0.2"}
    assert place([0, 1, 2], cluster(2, 2), ONE_CPU, "pack") == {0: "10.0.0.1", 1: "10.0.0.1", 2: "10.0.0.2"}


def test_spread_puts_ranks_on_the_emptiest_nodes():
    assert place([0, 1, 2, 3], cluster(4, 4, 1), ONE_CPU, "spread") == {
        0: "10.0.0.1", 1: "10.0.0.2", 2: "10.0.0.3", 3: "10.0.0.1"}


def test_strict_pack_is_one_node_or_nothing():
    assert set(place([0, 1], cluster(1, 2), ONE_CPU, "strict-pack").values()) == {"10.0.0.2"}
    with pytest.raises(NoFit) as err:
        place([0, 1, 2], cluster(2, 2), ONE_CPU, "strict-pack")
    assert ("cannot fit 3 ranks of {CPU: 1, GPU: 0} each with --ray-placement-strategy strict-pack; it has "
            "10.0.0.1: CPU 2, GPU 0; 10.0.0.2: CPU 2, GPU 0") in str(err.value)


def test_a_restarted_rank_goes_where_there_is_room_among_the_nodes_left():
    nodes = cluster(2)
    nodes[0].ranks = [0]
    assert place([1], nodes, ONE_CPU, "spread") == {1: "10.0.0.1"}
    full = cluster(1)
    full[0].ranks = [0]
    with pytest.raises(NoFit, match=r"10.0.0.1: CPU 1, GPU 0 \(ranks 0 already there\)"):
        place([1], full, ONE_CPU, "pack")
    packed = cluster(4, 4)
    packed[1].ranks = [0, 2]
    assert place([1], packed, ONE_CPU, "strict-pack") == {1: "10.0.0.2"}  # joins the others


def test_gpus_bound_the_room_and_pin_the_bundle():
    assert Node("n", cpus=16, gpus=2).room(RankNeed(1, 1)) == 2
    with pytest.raises(NoFit, match=r"GPU: 1\} each"):
        place([0, 1, 2], cluster(16, gpus=2), RankNeed(1, 1), "pack")
    assert bundle(RankNeed(2, 1), "10.0.0.7") == {"CPU": 2, "GPU": 1, "node:10.0.0.7": 0.001}
    assert bundle(ONE_CPU, "10.0.0.7") == {"CPU": 1, "node:10.0.0.7": 0.001}


def test_a_rank_of_tensor_parallel_workers_asks_for_all_of_them():
    tp2 = RankNeed(cpus_per_worker=1, gpus_per_worker=0, workers=2)
    assert (tp2.cpus, tp2.gpus) == (2, 0)
    assert bundle(tp2, "10.0.0.7") == {"CPU": 2, "node:10.0.0.7": 0.001}
    assert bundle(RankNeed(4, 1, workers=2), "10.0.0.7") == {"CPU": 8, "GPU": 2, "node:10.0.0.7": 0.001}
    # two nodes with room for one such rank each: pack fills the first, then the other
    assert place([0, 1], cluster(2, 2), tp2, "pack") == {0: "10.0.0.1", 1: "10.0.0.2"}
    assert Node("n", cpus=16, gpus=2).room(RankNeed(1, 1, workers=2)) == 1  # GPUs bound it: two per rank
    with pytest.raises(NoFit) as err:
        place([0, 1, 2], cluster(2, 2), tp2, "pack")
    assert ("cannot fit 3 ranks of {CPU: 2, GPU: 0} each (2 tensor-parallel workers of {CPU: 1, GPU: 0}) "
            "with --ray-placement-strategy pack; it has 10.0.0.1: CPU 2, GPU 0 (ranks 0 already there); "
            "10.0.0.2: CPU 2, GPU 0 (ranks 1 already there)") in str(err.value)
    assert "lower --ray-cpus-per-rank/--ray-gpus-per-rank, -tp or -dp" in str(err.value)


def test_a_ranks_engine_gets_a_thread_per_cpu_of_its_bundle():
    assert RankNeed(1, 0, workers=2).threads == 2  # one per worker (EngineConfig.threads_per_worker)
    assert RankNeed(3, 0).threads == 3
    assert RankNeed(0.5, 0).threads == 1  # never none


def test_only_alive_nodes_count():
    nodes = nodes_from_ray([
        {"NodeManagerAddress": "10.0.0.2", "Alive": True, "Resources": {"CPU": 4.0}},
        {"NodeManagerAddress": "10.0.0.9", "Alive": False, "Resources": {"CPU": 64.0}},
        {"NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
    ])
    assert [(n.ip, n.cpus, n.gpus) for n in nodes] == [("10.0.0.1", 2.0, 1.0), ("10.0.0.2", 4.0, 0.0)]
