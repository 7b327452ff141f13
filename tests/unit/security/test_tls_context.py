"""TLS contexts built from real certificates made here: validation errors and hot refresh."""
from __future__ import annotations

import shutil
import socket
import ssl
import threading

import pytest

from certs import CertAuthority  # noqa: E402

from bastion.args.security import check_exposure  # noqa: E402
from bastion.config.security import SecurityConfig, TlsConfig  # noqa: E402
from bastion.security.tls import TlsRefresher, build_context  # noqa: E402


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("pki"))


def test_flags_go_together():
    with pytest.raises(ValueError, match="--ssl-keyfile needs --ssl-certfile"):
        TlsConfig(keyfile="k")
    with pytest.raises(ValueError, match="--ssl-certfile needs --ssl-keyfile"):
        TlsConfig(certfile="c")
    with pytest.raises(ValueError, match="--ssl-cert-reqs required needs --ssl-ca-certs"):
        TlsConfig(keyfile="k", certfile="c", cert_reqs="required")
    with pytest.raises(ValueError, match="--enable-ssl-refresh needs --ssl-keyfile"):
        TlsConfig(refresh=True)


def test_problems_name_the_file(ca, tmp_path):
    good, other = ca.issue("good"), ca.issue("other")
    expired = ca.issue("expired", days=-1)
    locked = ca.issue("locked", password=b"hunter2-password")
    cases = [
        (TlsConfig(str(good.key), str(tmp_path / "absent.crt")), "absent.crt (--ssl-certfile)"),
        (TlsConfig(str(tmp_path / "absent.key"), str(good.cert)), "absent.key (--ssl-keyfile)"),
        (TlsConfig(str(other.key), str(good.cert)), "does not match the certificate"),
        (TlsConfig(str(expired.key), str(expired.cert)), f"{expired.cert} (--ssl-certfile) expired"),
        (TlsConfig(str(locked.key), str(locked.cert)), "--ssl-keyfile-password-file"),
        (TlsConfig(str(good.key), str(good.cert), ciphers="NOPE-NOTHING"), "--ssl-ciphers"),
        (TlsConfig(str(good.key), str(good.cert), ca_certs=str(good.key), cert_reqs="required"),
         "--ssl-ca-certs"),
    ]
    for tls, needle in cases:
        with pytest.raises(ValueError) as err:
            build_context(tls)
        assert needle in str(err.value), (needle, str(err.value))
    (tmp_path / "pw").write_text("hunter2-password\n")
    ctx = build_context(TlsConfig(str(locked.key), str(locked.cert), str(tmp_path / "pw")))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    (tmp_path / "bad-pw").write_text("wrong\n")
    with pytest.raises(ValueError, match="wrong password"):
        build_context(TlsConfig(str(locked.key), str(locked.cert), str(tmp_path / "bad-pw")))


def peer_name(port: int, ca: CertAuthority) -> str:
    client = ssl.create_default_context(cafile=str(ca.path))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]


def test_refresh_swaps_only_a_good_pair_and_keeps_serving_the_old_one(ca, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    first, second = ca.issue("first"), ca.issue("second")
    shutil.copy(first.cert, live / "tls.crt")
    shutil.copy(first.key, live / "tls.key")
    refresher = TlsRefresher(TlsConfig(str(live / "tls.key"), str(live / "tls.crt"), refresh=True))
    refresher.watch.stop()  # driven by hand below
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                refresher.context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()
    threading.Thread(target=serve, daemon=True).start()
    try:
        assert peer_name(port, ca) == "first"
        (live / "tls.crt").write_bytes(second.cert.read_bytes())  # half a rotation: key not yet
        assert refresher.watch.poll() and refresher.reloads == 0
        assert peer_name(port, ca) == "first"
        (live / "tls.key").write_bytes(second.key.read_bytes())
        assert refresher.watch.poll() and refresher.reloads == 1
        assert peer_name(port, ca) == "second"
        (live / "tls.crt").write_text("garbage")
        assert refresher.watch.poll() and refresher.reloads == 1
        assert peer_name(port, ca) == "second"
    finally:
        listener.close()


def test_non_loopback_without_credentials_needs_allow_insecure():
    check_exposure("127.0.0.1", SecurityConfig())
    check_exposure("localhost", SecurityConfig())
    with pytest.raises(ValueError, match="--allow-insecure"):
        check_exposure("0.0.0.0", SecurityConfig())
    check_exposure("0.0.0.0", SecurityConfig(allow_insecure=True))
    check_exposure("0.0.0.0", SecurityConfig(api_key_file="keys.toml"))
