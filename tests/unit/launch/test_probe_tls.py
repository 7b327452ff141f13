"""The supervisor's probes against real TLS servers made here: pinned certificates, CA checks for
the rank's own name, mutual TLS, impostors and certificate refresh. Never verify=False."""
from __future__ import annotations

import asyncio
import shutil

import pytest
from certs import CertAuthority
from tls_server import tls_server

from bastion.config.deployment import SupervisorConfig
from bastion.config.security import TlsConfig
from bastion.launch.supervisor.probe import Prober, ProbeTls, server_name
from bastion.security.tls import check_certificate


def probe(url: str, tls: ProbeTls):
    async def once():
        prober = Prober(url, tls, timeout_s=5)
        try:
            return await prober.probe()
        finally:
            await prober.close()
    return asyncio.run(once())


def pair(issued, **extra) -> TlsConfig:
    return TlsConfig(keyfile=str(issued.key), certfile=str(issued.cert), **extra)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("other-pki"), name="impostor CA")


def test_the_pinned_certificate_passes_and_any_other_fails(ca):
    rank, impostor = ca.issue("rank"), ca.issue("impostor")
    tls = ProbeTls(pair(rank), SupervisorConfig(), "127.0.0.1")
    with tls_server(pair(rank)) as url:
        result = probe(url, tls)
        assert result.ok and result.status == 200 and result.latency_s > 0
    with tls_server(pair(impostor)) as url:  # same CA, same names: still not the rank's certificate
        result = probe(url, tls)
        assert not result.ok and "CERTIFICATE_VERIFY_FAILED" in result.error


def test_with_a_ca_the_certificate_must_chain_to_it(ca, other_ca):
    rank, stranger = ca.issue("rank-ca"), other_ca.issue("stranger")
    tls = ProbeTls(pair(rank, ca_certs=str(ca.path)), SupervisorConfig(), "127.0.0.1")
    with tls_server(pair(rank)) as url:
        assert probe(url, tls).ok
    with tls_server(pair(stranger)) as url:
        result = probe(url, tls)
        assert not result.ok and "CERTIFICATE_VERIFY_FAILED" in result.error


def test_with_a_ca_the_name_in_the_ranks_certificate_is_checked(ca):
    rank = ca.issue("named", hosts=("rank-1.bastion.internal",))
    other = ca.issue("other-name", hosts=("other.bastion.internal",))
    assert server_name(check_certificate(str(rank.cert)), "127.0.0.1") == "rank-1.bastion.internal"
    assert server_name(check_certificate(str(ca.issue("ip").cert)), "127.0.0.1") == "127.0.0.1"
    tls = ProbeTls(pair(rank, ca_certs=str(ca.path)), SupervisorConfig(), "127.0.0.1")
    with tls_server(pair(rank)) as url:
        assert probe(url, tls).ok  # reached at 127.0.0.1, verified for its DNS name (SNI)
    with tls_server(pair(other)) as url:
        result = probe(url, tls)
        assert not result.ok and "Hostname mismatch" in result.error


def test_mutual_tls_probes_present_the_client_certificate(ca, other_ca):
    rank, client = ca.issue("mtls-rank"), ca.issue("probe-client", client=True)
    server_tls = pair(rank, ca_certs=str(ca.path), cert_reqs="required")
    with tls_server(server_tls) as url:
        explicit = SupervisorConfig(client_certfile=str(client.cert), client_keyfile=str(client.key))
        assert probe(url, ProbeTls(server_tls, explicit, "127.0.0.1")).ok
        foreign = other_ca.issue("foreign-client", client=True)
        wrong = SupervisorConfig(client_certfile=str(foreign.cert), client_keyfile=str(foreign.key))
        assert not probe(url, ProbeTls(server_tls, wrong, "127.0.0.1")).ok
    with pytest.raises(ValueError, match="lacks clientAuth.*--ssl-client-certfile"):
        ProbeTls(server_tls, SupervisorConfig(), "127.0.0.1")  # a server-only pair cannot be a client


def test_mutual_tls_defaults_to_the_server_pair_when_it_allows_client_auth(ca):
    both = ca.issue("both-ways", also_client=True)
    server_tls = pair(both, ca_certs=str(ca.path), cert_reqs="required")
    with tls_server(server_tls) as url:
        assert probe(url, ProbeTls(server_tls, SupervisorConfig(), "127.0.0.1")).ok


def test_a_refreshed_certificate_is_pinned_and_the_previous_one_still_passes(ca, tmp_path):
    old, new = ca.issue("before"), ca.issue("after")
    cert, key = tmp_path / "rank.crt", tmp_path / "rank.key"
    shutil.copy(old.cert, cert)
    shutil.copy(old.key, key)
    tls = ProbeTls(TlsConfig(keyfile=str(key), certfile=str(cert), refresh=True), SupervisorConfig(),
                   "127.0.0.1")
    shutil.copy(new.cert, cert)
    shutil.copy(new.key, key)
    with tls_server(pair(old)) as url:
        assert probe(url, tls).ok  # the rank may not have reloaded yet
    with tls_server(pair(new)) as url:
        assert probe(url, tls).ok
    assert len(tls.pins) == 2


def test_a_closed_port_fails_fast_with_the_reason():
    async def once():
        prober = Prober("http://127.0.0.1:9", None, timeout_s=2)
        try:
            return await prober.probe()
        finally:
            await prober.close()
    result = asyncio.run(once())
    assert not result.ok and result.status is None and "ConnectError" in result.error
