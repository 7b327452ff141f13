"""Flags for ranks on several nodes: rank arithmetic and the internal channel's needs are checked
before anything starts, each with a message naming the flag; each node finds its own address."""
from __future__ import annotations

import pytest

from bastion.args.serve import serve_config
from bastion.cli import build_parser
from bastion.launch.net import node_address


@pytest.fixture()
def secret(tmp_path) -> str:
    path = tmp_path / "internal.secret"
    path.write_text("s" * 48)
    return str(path)


def config(*argv: str):
    return serve_config(build_parser().parse_args(["serve", *argv]))


@pytest.mark.parametrize("argv, message", [
    (["-dp", "4", "-dpl", "0"], "--data-parallel-size-local must be at least 1"),
    (["-dp", "4", "-dpl", "2", "--headless", "-dpr", "3", "-dpa", "127.0.0.2"],
     "--data-parallel-start-rank 3 + --data-parallel-size-local 2 is more than --data-parallel-size 4"),
    (["-dp", "4", "-dpr", "-1"], "--data-parallel-start-rank must be non-negative"),
    (["-dp", "4", "-dpl", "2", "-dpr", "2"], "--data-parallel-start-rank 2 is for --headless nodes and"),
    (["-dp", "2", "--headless", "-dpr", "1"], "--headless needs --data-parallel-address"),
    (["-dp", "2", "-dpl", "1", "-dpp", "70000"], "--data-parallel-rpc-port must be in [1, 65535]"),
    (["-dp", "2", "-dpl", "1", "-dpa", "127.0.0.2"], "need --internal-secret-file"),
])
def test_rank_arithmetic_and_addresses(argv, message, monkeypatch):
    monkeypatch.delenv("BASTION_HOST_IP", raising=False)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("+", r"\+")):
        config(*argv)


def test_ranks_on_several_nodes_need_encrypted_tcp(secret, monkeypatch):
    monkeypatch.delenv("BASTION_HOST_IP", raising=False)
    with pytest.raises(ValueError, match="drop --internal-transport ipc"):
        config("-dp", "2", "-dpl", "1", "-dpa", "127.0.0.2", "--internal-secret-file", secret,
               "--internal-transport", "ipc")
    with pytest.raises(ValueError, match="need --internal-encryption on"):
        config("-dp", "2", "-dpl", "1", "-dpa", "127.0.0.2", "--internal-secret-file", secret,
               "--internal-encryption", "off")
    with pytest.raises(ValueError, match="needs --data-parallel-address"):
        config("-dp", "2", "-dpl", "1", "--internal-secret-file", secret)


def test_each_node_binds_its_own_address(secret, monkeypatch):
    monkeypatch.delenv("BASTION_HOST_IP", raising=False)
    head = config("-dp", "2", "-dpl", "1", "-dpa", "127.0.0.2", "--internal-secret-file", secret)
    assert head.internal.transport == "tcp" and head.internal.host == "127.0.0.2"
    assert head.parallel.local_size == 1 and head.parallel.multi_node
    monkeypatch.setenv("BASTION_HOST_IP", "127.0.0.3")
    node = config("-dp", "2", "--headless", "-dpr", "1", "-dpa", "127.0.0.2", "--internal-secret-file", secret)
    assert node.internal.host == "127.0.0.3" and node.parallel.local_size == 1
    single = config("-dp", "2")
    assert single.internal.transport == "ipc" and not single.parallel.multi_node


def test_the_address_toward_the_head_comes_from_the_route(monkeypatch):
    monkeypatch.delenv("BASTION_HOST_IP", raising=False)
    assert node_address("127.0.0.2").startswith("127.")  # loopback routes stay on loopback
    assert node_address(None) == "127.0.0.1"
    monkeypatch.setenv("BASTION_HOST_IP", "127.0.0.9")
    assert node_address("127.0.0.2") == "127.0.0.9"
