"""`bastion serve` security flags (named as vLLM's/uvicorn's where they mean the same) and
the checks that run before anything starts: TLS files, key file, JWT key, insecure binds."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import socket

from bastion.config.security import CERT_REQS, DEFAULT_MAX_TRACKED_PRINCIPALS, JwtConfig, Limits, SecurityConfig, TlsConfig
from bastion.security.keys import env_keys, secret_keys

logger = logging.getLogger(__name__)


def _cert_reqs(text: str) -> str:
    """none|optional|required, or uvicorn's 0|1|2."""
    by_number = dict(zip(("0", "1", "2"), CERT_REQS))
    value = by_number.get(text, text.lower())
    if value not in CERT_REQS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(CERT_REQS)} (or 0, 1, 2)")
    return value


def add_security_args(parser: argparse.ArgumentParser) -> None:
    t = parser.add_argument_group("TLS")
    t.add_argument("--ssl-keyfile", "--ssl-key-file",
                   help="PEM private key of the server certificate (needs --ssl-certfile)")
    t.add_argument("--ssl-certfile", "--ssl-cert-file", help="PEM certificate (chain) to serve HTTPS with")
    t.add_argument("--ssl-keyfile-password-file", help="file holding the password of an encrypted --ssl-keyfile")
    t.add_argument("--ssl-ca-certs", help="PEM CA bundle that client certificates must chain to (mTLS)")
    t.add_argument("--ssl-cert-reqs", type=_cert_reqs, default="none",
                   help="client certificates: none, optional or required (mutual TLS); default none")
    t.add_argument("--ssl-ciphers", help="OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are fixed)")
    t.add_argument("--enable-ssl-refresh", action="store_true",
                   help="reload the key, certificate and CA when their files change (validated first)")
    a = parser.add_argument_group("authentication")
    a.add_argument("--api-key-file", help="TOML file of named API keys with scopes, tenant and limits; "
                   "reloaded on change and on SIGHUP (see docs/security.md)")
    a.add_argument("--api-key", help="a full-access API key; prefer BASTION_API_KEY or --api-key-file: "
                   "every local user can read argv from the process list")
    a.add_argument("--jwt-secret-file", help="file with the HS256 secret for JWT bearer tokens")
    a.add_argument("--jwt-public-key-file", help="PEM public key for RS256/ES256 JWT bearer tokens")
    a.add_argument("--jwt-issuer", help="required 'iss' claim of JWTs")
    a.add_argument("--jwt-audience", help="required 'aud' claim of JWTs")
    a.add_argument("--jwt-leeway", type=float, default=30.0, help="clock skew allowed on exp/nbf (s)")
    a.add_argument("--allow-insecure", action="store_true",
                   help="serve a non-loopback --host with no credentials configured")
    lim = parser.add_argument_group("limits and audit")
    lim.add_argument("--default-requests-per-minute", type=int, default=None,
                     help="per-principal request rate for keys and tokens that set none")
    lim.add_argument("--default-tokens-per-minute", type=int, default=None,
                     help="per-principal token rate (prompt + max_tokens reserved, settled to usage)")
    lim.add_argument("--default-max-concurrent-per-principal", type=int, default=None,
                     help="per-principal concurrent requests for keys and tokens that set none")
    lim.add_argument("--default-max-waiting-per-principal", type=int, default=None,
                     help="per-principal requests waiting for an engine slot (beyond: 429) for keys "
                          "and tokens that set none; waiting requests are admitted round-robin by tenant")
    lim.add_argument("--max-concurrent-requests", type=int, default=None,
                     help="requests generating at once across the server; more wait in a queue")
    lim.add_argument("--max-waiting-requests", type=int, default=None,
                     help="bound of that queue (default: --max-concurrent-requests); beyond it, 429")
    lim.add_argument("--max-tracked-principals", type=int, default=DEFAULT_MAX_TRACKED_PRINCIPALS,
                     help="principals (keys, JWT subjects) whose limits are tracked at once; idle ones "
                          "whose buckets have refilled are forgotten, least recently used first; when "
                          "none is, a new principal gets 503 until one is (default "
                          f"{DEFAULT_MAX_TRACKED_PRINCIPALS:,})")
    lim.add_argument("--audit-log", help="append one JSON line per request to this file (reopened on SIGHUP)")


_DEFAULT_FLAGS = {"requests_per_minute": "--default-requests-per-minute",
                  "tokens_per_minute": "--default-tokens-per-minute",
                  "max_concurrent_requests": "--default-max-concurrent-per-principal",
                  "max_waiting_requests": "--default-max-waiting-per-principal"}


def security_config(args: argparse.Namespace) -> SecurityConfig:
    """Build and validate the security config; ValueError names the flag or file."""
    from bastion.security.auth import Authenticator
    from bastion.security.tls import build_context

    tls = TlsConfig(args.ssl_keyfile, args.ssl_certfile, args.ssl_keyfile_password_file,
                    args.ssl_ca_certs, args.ssl_cert_reqs, args.ssl_ciphers, args.enable_ssl_refresh)
    jwt = JwtConfig(args.jwt_secret_file, args.jwt_public_key_file, args.jwt_issuer,
                    args.jwt_audience, args.jwt_leeway)
    extra = env_keys()
    if args.api_key:
        logger.warning("--api-key puts the key in the process list, where every local user can "
                       "read it; use BASTION_API_KEY or --api-key-file instead")
        extra += secret_keys(args.api_key, "api-key")
    try:
        limits = Limits(args.default_requests_per_minute, args.default_tokens_per_minute,
                        args.default_max_concurrent_per_principal,
                        args.default_max_waiting_per_principal)
    except ValueError as exc:
        message = str(exc)
        for field, flag in _DEFAULT_FLAGS.items():
            message = message.replace(field, flag)
        raise ValueError(message) from None
    config = SecurityConfig(tls, jwt, args.api_key_file, extra, args.allow_insecure, limits,
                            args.max_concurrent_requests, args.max_waiting_requests, args.audit_log,
                            args.max_tracked_principals)
    if tls.enabled:
        build_context(tls)
    Authenticator(config)  # reads the key file and JWT key: their errors name the file
    return config


def check_exposure(host: str, security: SecurityConfig) -> None:
    """Refuse a non-loopback bind without credentials unless --allow-insecure."""
    if security.credentials_configured or security.allow_insecure or _is_loopback(host):
        return
    raise ValueError(f"refusing to serve {host} (--host) without credentials: anyone who can reach it "
                     "could use the model. Configure --api-key-file, BASTION_API_KEY or "
                     "--jwt-secret-file/--jwt-public-key-file, or pass --allow-insecure")


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)
