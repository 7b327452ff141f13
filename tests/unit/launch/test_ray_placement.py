"""Where ranks go on a Ray cluster: pack fills nodes, spread balances them, strict-pack keeps all on
one node; a restarted rank goes where the strategy says among the nodes left; NoFit says what was
asked and what each node has."""
from __future__ import annotations

import pytest

from bastion.launch.ray.placement import Node, NoFit, bundle, nodes_from_ray, place


def cluster(*cpus: float, gpus: float = 0) -> list[Node]:
    return [Node(f"10.0.0.{i + 1}", c, gpus) for i, c in enumerate(cpus)]


def test_pack_fills_the_roomiest_node_first():
    assert place([0, 1, 2], cluster(2, 4), 1, 0, "pack") == {0: "10.0.0.2", 1: "10.0.0.2", 2: "10.0.0.2"}
    assert place([0, 1, 2], cluster(2, 2), 1, 0, "pack") == {0: "10.0.0.1", 1: "10.0.0.1", 2: "10.0.0.2"}


def test_spread_puts_ranks_on_the_emptiest_nodes():
    assert place([0, 1, 2, 3], cluster(4, 4, 1), 1, 0, "spread") == {
        0: "10.0.0.1", 1: "10.0.0.2", 2: "10.0.0.3", 3: "10.0.0.1"}


def test_strict_pack_is_one_node_or_nothing():
    assert set(place([0, 1], cluster(1, 2), 1, 0, "strict-pack").values()) == {"10.0.0.2"}
    with pytest.raises(NoFit) as err:
        place([0, 1, 2], cluster(2, 2), 1, 0, "strict-pack")
    assert ("cannot fit 3 ranks of {CPU: 1, GPU: 0} each with --ray-placement-strategy strict-pack; it has "
            "10.0.0.1: CPU 2, GPU 0; 10.0.0.2: CPU 2, GPU 0") in str(err.value)


def test_a_restarted_rank_goes_where_there_is_room_among_the_nodes_left():
    nodes = cluster(2)
    nodes[0].ranks = [0]
    assert place([1], nodes, 1, 0, "spread") == {1: "10.0.0.1"}
    full = cluster(1)
    full[0].ranks = [0]
    with pytest.raises(NoFit, match=r"10.0.0.1: CPU 1, GPU 0 \(ranks 0 already there\)"):
        place([1], full, 1, 0, "pack")
    packed = cluster(4, 4)
    packed[1].ranks = [0, 2]
    assert place([1], packed, 1, 0, "strict-pack") == {1: "10.0.0.2"}  # joins the others


def test_gpus_bound_the_room_and_pin_the_bundle():
    assert Node("n", cpus=16, gpus=2).room(1, 1) == 2
    with pytest.raises(NoFit, match=r"GPU: 1\} each"):
        place([0, 1, 2], cluster(16, gpus=2), 1, 1, "pack")
    assert bundle(2, 1, "10.0.0.7") == {"CPU": 2, "GPU": 1, "node:10.0.0.7": 0.001}
    assert bundle(1, 0, "10.0.0.7") == {"CPU": 1, "node:10.0.0.7": 0.001}


def test_only_alive_nodes_count():
    nodes = nodes_from_ray([
        {"NodeManagerAddress": "10.0.0.2", "Alive": True, "Resources": {"CPU": 4.0}},
        {"NodeManagerAddress": "10.0.0.9", "Alive": False, "Resources": {"CPU": 64.0}},
        {"NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
    ])
    assert [(n.ip, n.cpus, n.gpus) for n in nodes] == [("10.0.0.1", 2.0, 1.0), ("10.0.0.2", 4.0, 0.0)]
