"""The multi-port supervisor mode's flags: every bad combination stops with exit code 2 and a
message naming the flag, before any process starts or model loads."""
from __future__ import annotations

import argparse
import socket

import pytest
from certs import CertAuthority

from bastion.args.supervisor import supervisor_config
from bastion.cli import main

MODE = ["serve", "--data-parallel-multi-port-external-lb", "--port", "18200"]


@pytest.mark.parametrize("extra, message", [
    (["-dp", "1"], "needs --data-parallel-size (-dp) of at least 2, got 1"),
    (["-dp", "2", "--data-parallel-supervisor-port", "18201"],
     "--data-parallel-supervisor-port 18201 falls in the rank ports 18200-18201"),
    (["-dp", "2", "--api-server-count", "2"], "--api-server-count must be 1 with"),
    (["-dp", "2", "--ssl-keyfile", "server.key"], "--ssl-keyfile needs --ssl-certfile"),
    (["-dp", "2", "--ssl-certfile", "server.crt"], "--ssl-certfile needs --ssl-keyfile"),
    (["-dp", "2", "--min-ready-ranks", "3"], "--min-ready-ranks must be in [1, 2]"),
    (["-dp", "2", "--dp-supervisor-probe-interval-s", "0"], "--dp-supervisor-probe-interval-s must be positive"),
    (["-dp", "2", "--dp-supervisor-probe-failure-threshold", "0"], "--dp-supervisor-probe-failure-threshold"),
    (["-dp", "2", "--ssl-client-certfile", "c.crt"], "--ssl-client-certfile and --ssl-client-keyfile go together"),
    (["-dp", "2", "--ssl-client-certfile", "c.crt", "--ssl-client-keyfile", "c.key"],
     "--ssl-client-certfile needs --ssl-keyfile and --ssl-certfile"),
    (["-dp", "2", "--port", "0"], "--port 0 cannot be used with --data-parallel-multi-port-external-lb"),
    (["-dp", "2", "--port", "65535"], "passes port 65535"),
])
def test_bad_combinations_exit_2_naming_the_flag(extra, message, capsys):
    assert main([*MODE, *extra]) == 2
    assert message in capsys.readouterr().err


def test_supervisor_flags_need_the_mode(capsys):
    assert main(["serve", "--min-ready-ranks", "1"]) == 2
    assert "--min-ready-ranks needs --data-parallel-multi-port-external-lb" in capsys.readouterr().err
    assert main(["serve", "--dp-supervisor-probe-timeout-s", "1"]) == 2
    assert "--dp-supervisor-probe-timeout-s needs" in capsys.readouterr().err


def test_headless_and_the_supervisor_are_refused_together(capsys):
    assert main([*MODE, "-dp", "2", "--headless", "-dpr", "1", "-dpl", "1", "-dpa", "127.0.0.2"]) == 2
    assert "cannot be combined with --headless: choose one load-balancing mode" in capsys.readouterr().err


def test_another_load_balancing_mode_is_refused(capsys):
    for mode in ({"headless": True}, {"data_parallel_backend": "ray"}):
        args = argparse.Namespace(data_parallel_multi_port_external_lb=True, **mode)
        with pytest.raises(ValueError, match="cannot be combined with --.*choose one load-balancing mode"):
            supervisor_config(args)
    assert main([*MODE, "-dp", "2", "--data-parallel-backend", "ray"]) == 2
    assert "cannot be combined with --data-parallel-backend ray" in capsys.readouterr().err


def test_a_taken_supervisor_port_is_named(capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        assert main(["serve", "--data-parallel-multi-port-external-lb", "-dp", "2", "--port",
                     str(port + 10 if port < 60000 else 20000), "--data-parallel-supervisor-port", str(port)]) == 2
    finally:
        taken.close()
    assert f"cannot listen on 127.0.0.1:{port} (--host/--data-parallel-supervisor-port)" in capsys.readouterr().err


def test_mutual_tls_with_a_server_only_certificate_needs_a_client_pair(tmp_path, capsys):
    ca = CertAuthority(tmp_path)
    server = ca.issue("server")
    assert main([*MODE, "-dp", "2", "--ssl-keyfile", str(server.key), "--ssl-certfile", str(server.cert),
                 "--ssl-ca-certs", str(ca.path), "--ssl-cert-reqs", "required"]) == 2
    assert "lacks clientAuth" in capsys.readouterr().err


def test_a_node_of_several_runs_its_own_ranks_from_port_on():
    from bastion.args.serve import serve_config
    from bastion.cli import build_parser
    from bastion.launch.supervisor.supervisor import rank_config, rank_port

    args = build_parser().parse_args([*MODE, "-dp", "4", "-dpl", "2", "-dpr", "2", "--port", "8100"])
    config = serve_config(args)
    assert config.internal.transport == "ipc"  # each rank is a whole server on this node
    assert [rank_port(config, r) for r in (2, 3)] == [8100, 8101]
    rank = rank_config(config, 3)
    assert (rank.server.port, rank.parallel.data_parallel_size, rank.parallel.local_size) == (8101, 1, 1)
    assert config.ready_ranks_needed == 2
    with pytest.raises(ValueError, match=r"--min-ready-ranks must be in \[1, 2\] \(the ranks on this node\)"):
        serve_config(build_parser().parse_args([*MODE, "-dp", "4", "-dpl", "2", "-dpr", "2",
                                                "--min-ready-ranks", "3"]))
