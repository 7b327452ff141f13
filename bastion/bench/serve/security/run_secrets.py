"""Throwaway credentials for a benchmark run, made in a private folder the caller owns: a CA
and a server certificate for 127.0.0.1 (the client verifies against the CA), and an API key
whose SHA-256 digest goes into a keys file. The key itself stays in this process's memory: it
reaches the server only as a digest in the file, the client in memory, never argv or a log."""
from __future__ import annotations

import datetime
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from bastion.security.keys import digest

NEVER_BINDS = 1_000_000_000  # a per-key limit no benchmark run comes near


@dataclass(frozen=True)
class RunSecrets:
    ca: Path  # the CA certificate the client trusts
    cert: Path  # the server's certificate (SAN 127.0.0.1, localhost)
    key: Path  # its private key (0600)
    keys_file: Path  # the keys file (0600): one key, digest only, limits that never bind
    api_key: str  # the key the client presents

    def __repr__(self) -> str:  # never print the key
        return f"RunSecrets(ca={self.ca}, cert={self.cert}, keys_file={self.keys_file})"


def make_run_secrets(folder: Path, concurrency: int) -> RunSecrets:
    """Write the CA, the server certificate and key, and a keys file into `folder` (which the
    caller made private, e.g. a TemporaryDirectory). Limits are set so they are checked on every
    request but never refuse one at `concurrency` in flight."""
    ca, cert, key = folder / "ca.pem", folder / "server.crt", folder / "server.key"
    _write_tls(ca, cert, key)
    api_key = "sk-bench-" + secrets.token_urlsafe(32)
    keys_file = folder / "keys.toml"
    keys_file.touch(mode=0o600)
    keys_file.write_text(
        "[keys.bench]\n"
        f'sha256 = "{digest(api_key)}"\n'
        'scopes = ["inference"]\n'
        f"requests_per_minute = {NEVER_BINDS}\n"
        f"tokens_per_minute = {NEVER_BINDS}\n"
        f"max_concurrent_requests = {max(1024, 4 * concurrency)}\n"
        f"max_waiting_requests = {max(1024, 4 * concurrency)}\n")
    return RunSecrets(ca, cert, key, keys_file, api_key)


def _write_tls(ca_path: Path, cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bastion bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
