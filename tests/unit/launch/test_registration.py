"""Headless nodes register with the head over CurveZMQ (real sockets on 127.0.0.2): holders of
the secret are welcomed and their ranks announced; others are refused and learn nothing;
silent, departing and restarted nodes have their ranks marked down and back up."""
from __future__ import annotations

import logging
import time

import pytest

from bastion.launch.multinode.head_link import HeadLink
from bastion.launch.multinode.registry import RemoteRankRegistry
from bastion.transport.child_pipe import EngineEndpoint, RankDown, RankUp

SECRET = b"registration-secret-" + b"r" * 32
HEAD = "127.0.0.2"


def engines(*ranks: int) -> list[EngineEndpoint]:
    return [EngineEndpoint(r, f"tcp://127.0.0.3:{40000 + r}", b"k" * 40) for r in ranks]


@pytest.fixture()
def head():
    heard: list = []
    registry = RemoteRankRegistry(HEAD, 0, SECRET, range(2, 4), heard.append, heartbeat_timeout_s=1.5)
    registry.start()
    yield registry, heard
    registry.close()


def until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def pump(node: HeadLink, predicate, timeout: float = 10.0) -> bool:
    def step():
        node.poll()
        return predicate()
    return until(step, timeout)


def test_a_node_with_the_secret_registers_its_ranks(head):
    registry, heard = head
    node = HeadLink(HEAD, registry.port, SECRET, "127.0.0.3", engines(2, 3))
    try:
        assert pump(node, lambda: node.welcomed)
        assert until(lambda: len(heard) == 2)
        assert [(m.index, m.input_endpoint, m.restarts) for m in heard] == \
            [(2, "tcp://127.0.0.3:40002", 0), (3, "tcp://127.0.0.3:40003", 0)]
        assert all(isinstance(m, RankUp) for m in heard)
        node.report(RankDown(3, "engine-3 exited with code -9", "restarting", 1))
        assert until(lambda: len(heard) == 3)
        assert isinstance(heard[2], RankDown) and "node 127.0.0.3" in heard[2].reason
    finally:
        node.close()
    assert until(lambda: len(heard) == 5)  # goodbye: both ranks down at once
    assert {m.index for m in heard[3:]} == {2, 3} and "stopped" in heard[3].reason


def test_a_node_without_the_secret_is_refused_and_logged(head, caplog):
    registry, heard = head
    caplog.set_level(logging.WARNING)
    stranger = HeadLink(HEAD, registry.port, b"another-secret-" + b"x" * 32, "127.0.0.3", engines(2))
    try:
        assert not pump(stranger, lambda: stranger.welcomed, timeout=2.5)
        assert heard == [] and registry.nodes == {}
        assert until(lambda: "refused a peer at the registration port" in caplog.text)
        assert registry.refused > 0
    finally:
        stranger.close()


def test_ranks_that_are_not_remote_or_are_taken_are_refused(head):
    registry, heard = head
    wrong = HeadLink(HEAD, registry.port, SECRET, "127.0.0.4", engines(1, 2))  # rank 1 is the head's
    first = HeadLink(HEAD, registry.port, SECRET, "127.0.0.3", engines(2))
    second = HeadLink(HEAD, registry.port, SECRET, "127.0.0.5", engines(2))
    try:
        assert not pump(wrong, lambda: wrong.welcomed, timeout=1.5)
        assert pump(first, lambda: first.welcomed)
        assert not pump(second, lambda: second.welcomed, timeout=1.5)
        assert until(lambda: len(heard) == 1) and heard[0].index == 2
    finally:
        for node in (wrong, first, second):
            node.close()


def test_a_silent_node_loses_its_ranks_and_gets_them_back_when_it_returns(head):
    registry, heard = head
    node = HeadLink(HEAD, registry.port, SECRET, "127.0.0.3", engines(3))
    try:
        assert pump(node, lambda: node.welcomed)
        assert until(lambda: any(isinstance(m, RankDown) for m in heard), timeout=10)  # no heartbeats
        down = [m for m in heard if isinstance(m, RankDown)][0]
        assert down.index == 3 and "stopped answering" in down.reason
        assert pump(node, lambda: sum(isinstance(m, RankUp) for m in heard) == 2)  # heartbeat refused: hello
        assert [m.restarts for m in heard if isinstance(m, RankUp)] == [0, 1]
    finally:
        node.close()
