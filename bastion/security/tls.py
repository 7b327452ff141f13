"""TLS for the HTTP listeners: validated contexts (TLS >= 1.2, optional mTLS) and hot refresh.

`build_context` checks everything a user can get wrong before any model loads: unreadable
files, a key that does not match its certificate, a wrong key password, an expired or
not-yet-valid certificate, a bad CA file or cipher string. Each error names the flag and file.

`TlsRefresher` (`--enable-ssl-refresh`) polls the key, certificate, CA and password files
(following symlinks, so a Kubernetes-style `..data` swap is seen). On a change it builds and
validates a whole new context first and swaps it in only if it is good; otherwise it keeps
serving the old one and logs why. The swap happens per connection in the handshake (the SNI
callback hands the connection the current context), so open connections and streams go on.
"""
from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bastion.config.security import TlsConfig
from bastion.security.watch import FileWatch

logger = logging.getLogger(__name__)

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({flag}): {exc.strerror}") from None


def check_certificate(path: str, flag: str = "--ssl-certfile") -> x509.Certificate:
    """The first certificate in `path`; ValueError if unreadable, not PEM, expired or not yet valid."""
    try:
        certs = x509.load_pem_x509_certificates(_read(path, flag))
    except ValueError:
        raise ValueError(f"{path} ({flag}) holds no PEM certificate") from None
    cert, now = certs[0], datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc < now:
        raise ValueError(f"the certificate in {path} ({flag}) expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_before_utc > now:
        raise ValueError(f"the certificate in {path} ({flag}) is not valid before "
                         f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return cert


def build_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context for `tls`; ValueError names the flag and file of any problem."""
    assert tls.enabled
    check_certificate(tls.certfile)
    password = key_password(tls)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.certfile, tls.keyfile, password=password)
    except ssl.SSLError as exc:
        raise ValueError(_key_error(tls, exc)) from None
    if tls.ca_certs:
        check_certificate(tls.ca_certs, "--ssl-ca-certs")
        try:
            ctx.load_verify_locations(cafile=tls.ca_certs)
        except ssl.SSLError as exc:
            raise ValueError(f"cannot load the CA certificates in {tls.ca_certs} (--ssl-ca-certs): "
                             f"{exc.reason or exc}") from None
    ctx.verify_mode = _CERT_REQS[tls.cert_reqs]
    if tls.ciphers:
        try:
            ctx.set_ciphers(tls.ciphers)
        except ssl.SSLError:
            raise ValueError(f"--ssl-ciphers {tls.ciphers!r} selects no usable cipher") from None
    return ctx


def key_password(tls: TlsConfig) -> bytes | None:
    """The password that opens --ssl-keyfile (None for a plain key); ValueError names the flag."""
    password = None
    if tls.keyfile_password_file:
        password = _read(tls.keyfile_password_file, "--ssl-keyfile-password-file").rstrip(b"\r\n")
    return _check_key(tls, _read(tls.keyfile, "--ssl-keyfile"), password)


def _check_key(tls: TlsConfig, data: bytes, password: bytes | None) -> bytes | None:
    """Check the key decrypts; returns the password to use (None for a plain key)."""
    try:
        serialization.load_pem_private_key(data, password)
        return password
    except TypeError:
        if password is None:
            raise ValueError(f"the key {tls.keyfile} (--ssl-keyfile) is encrypted: give its password "
                             "with --ssl-keyfile-password-file") from None
        serialization.load_pem_private_key(data, None)  # a password given for a plain key
        return None
    except ValueError:
        if password is not None:
            raise ValueError(f"cannot decrypt the key {tls.keyfile} (--ssl-keyfile): wrong password "
                             "(--ssl-keyfile-password-file)") from None
        raise ValueError(f"{tls.keyfile} (--ssl-keyfile) holds no PEM private key") from None


def _key_error(tls: TlsConfig, exc: ssl.SSLError) -> str:
    reason = (exc.reason or "").upper()
    if "MISMATCH" in reason:
        return f"the key {tls.keyfile} (--ssl-keyfile) does not match the certificate {tls.certfile} (--ssl-certfile)"
    return f"cannot load the key {tls.keyfile} (--ssl-keyfile) with {tls.certfile} (--ssl-certfile): {exc.reason or exc}"


class TlsRefresher:
    """Serves `context` (whose handshakes use the latest good configuration) and keeps it fresh."""

    def __init__(self, tls: TlsConfig) -> None:
        self.tls = tls
        self.context = build_context(tls)
        self.context.sni_callback = self._handshake
        self.current = self.context  # NOTE: replaced by a fresh context on each good reload
        self.reloads = 0
        paths = [p for p in (tls.certfile, tls.keyfile, tls.ca_certs, tls.keyfile_password_file) if p]
        self.watch = FileWatch(paths, self.reload, "tls-refresh")

    def _handshake(self, sslobj: ssl.SSLObject, server_name, context) -> None:
        current = self.current
        if current is not self.context:
            sslobj.context = current
        return None

    def reload(self) -> bool:
        """Build a new context from the files; go live with it only if it is good."""
        try:
            fresh = build_context(self.tls)
        except ValueError as exc:
            logger.error("TLS files changed but are not usable; still serving the previous "
                         "certificate: %s", exc)
            return False
        self.current = fresh
        self.reloads += 1
        logger.warning("TLS certificate reloaded from %s", self.tls.certfile)
        return True

    def stop(self) -> None:
        self.watch.stop()
