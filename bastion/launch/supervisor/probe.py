"""The supervisor's health probes: `GET /health` on each rank, over a fresh connection each time.

Over TLS the rank's certificate is always verified, never skipped:

* with `--ssl-ca-certs`, against that CA, for the name the rank's own certificate carries (the
  probe address when the certificate lists it, else its first DNS name, sent as SNI);
* without it, by pinning the certificate the rank was started with: that certificate is the
  only trust anchor (the previous one too after a refresh, so a rotation in flight does not
  fail probes), so any other certificate on the rank's port fails the probe.

Under `--ssl-cert-reqs required` the probes present a client certificate: `--ssl-client-certfile`
and `--ssl-client-keyfile`, else the server's own pair (which must then allow clientAuth).
With `--enable-ssl-refresh` the context is rebuilt when any of those files changes.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.config.deployment import SupervisorConfig
from bastion.config.security import TlsConfig
from bastion.security.audit import PROBE_HEADER
from bastion.security.tls import check_certificate, key_password
from bastion.security.watch import signature

logger = logging.getLogger(__name__)

USER_AGENT = "bastion-supervisor-probe"


@dataclass(frozen=True)
class ProbeResult:
    """One probe: passed or not, how long it took, the HTTP status and what went wrong."""

    ok: bool
    latency_s: float
    status: int | None = None
    error: str | None = None


class ProbeTls:
    """The probes' client TLS context; ValueError (naming the flag) when it cannot be built."""

    def __init__(self, tls: TlsConfig, supervisor: SupervisorConfig, probe_host: str) -> None:
        assert tls.enabled
        self.tls, self.supervisor, self.probe_host = tls, supervisor, probe_host
        self.pins: list[bytes] = []
        self.paths = [p for p in (tls.certfile, tls.ca_certs, supervisor.client_certfile,
                                  supervisor.client_keyfile) if p]
        self._seen = signature(self.paths)
        self.context, self.server_name = self._build()

    def current(self) -> tuple[ssl.SSLContext, str | None]:
        """The context and server name to probe with, rebuilt first if a file changed (refresh)."""
        if self.tls.refresh and signature(self.paths) != self._seen:
            self._seen = signature(self.paths)
            try:
                self.context, self.server_name = self._build()
            except ValueError as exc:
                logger.error("TLS files changed but the probes cannot use them; keeping the "
                             "previous ones: %s", exc)
        return self.context, self.server_name

    def _build(self) -> tuple[ssl.SSLContext, str | None]:
        leaf = check_certificate(self.tls.certfile)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        name = None
        if self.tls.ca_certs:
            ctx.load_verify_locations(cafile=self.tls.ca_certs)
            name = server_name(leaf, self.probe_host)
        else:
            ctx.check_hostname = False  # NOTE: the pinned certificate itself is the identity
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            pem = leaf.public_bytes(serialization.Encoding.PEM)
            pins = [pem, *(p for p in self.pins[:1] if p != pem)]
            ctx.load_verify_locations(cadata="".join(p.decode() for p in pins))
            self.pins = pins
        self._load_client_certificate(ctx)
        return ctx, name

    def _load_client_certificate(self, ctx: ssl.SSLContext) -> None:
        sup, tls = self.supervisor, self.tls
        if sup.client_certfile:
            pair, password, flags = (sup.client_certfile, sup.client_keyfile), None, \
                "--ssl-client-certfile/--ssl-client-keyfile"
        elif tls.cert_reqs == "required":
            check_client_usage(tls.certfile)
            pair, password, flags = (tls.certfile, tls.keyfile), key_password(tls), \
                "--ssl-certfile/--ssl-keyfile as the probes' client certificate"
        else:
            return
        try:
            ctx.load_cert_chain(*pair, password=password)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"cannot load the probes' client certificate {pair[0]} with key "
                             f"{pair[1]} ({flags}): {getattr(exc, 'reason', None) or exc}") from None


def check_client_usage(certfile: str) -> None:
    """The server certificate doubles as the probes' client certificate: it must allow clientAuth."""
    cert = check_certificate(certfile)
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise ValueError(f"under --ssl-cert-reqs required the supervisor's probes present a client "
                         f"certificate, and {certfile} (--ssl-certfile) is for servers only (its "
                         "extended key usage lacks clientAuth): give --ssl-client-certfile and "
                         "--ssl-client-keyfile")


def server_name(cert: x509.Certificate, host: str) -> str:
    """The name to verify a rank's certificate for: `host` when the certificate lists it, else
    the certificate's first DNS name (sent as SNI), else its common name."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    dns = sans.get_values_for_type(x509.DNSName) if sans else []
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] if sans else []
    try:
        if str(ipaddress.ip_address(host)) in ips:
            return host
    except ValueError:
        if host in dns:
            return host
    plain = [name for name in dns if not name.startswith("*")]
    if plain:
        return plain[0]
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else host


class Prober:
    """Probes one rank's `/health`; each probe opens a new connection (no keep-alive), so a
    process that took over the port is met on the very next probe. With `token`
    (--audit-log-skip-probes) each probe presents it, and the rank writes no audit line for it."""

    def __init__(self, url: str, tls: ProbeTls | None, timeout_s: float, token: str | None = None) -> None:
        self.url, self.tls, self.timeout_s = url.rstrip("/") + "/health", tls, timeout_s
        self.headers = {"user-agent": USER_AGENT, **({PROBE_HEADER.decode(): token} if token else {})}
        self._client: httpx.AsyncClient | None = None
        self._context: ssl.SSLContext | None = None

    async def _client_for(self, context: ssl.SSLContext | None) -> httpx.AsyncClient:
        if self._client is None or context is not self._context:
            await self.close()  # a refreshed TLS context: the old client goes
            # NOTE: trust_env=False: a proxy from the environment must never see rank probes.
            self._client = httpx.AsyncClient(
                verify=context if context is not None else True, trust_env=False,
                timeout=self.timeout_s, limits=httpx.Limits(max_keepalive_connections=0),
                headers=self.headers)
            self._context = context
        return self._client

    async def probe(self) -> ProbeResult:
        context, name = self.tls.current() if self.tls else (None, None)
        client = await self._client_for(context)
        extensions = {"sni_hostname": name} if name else {}
        start = time.monotonic()
        try:
            reply = await asyncio.wait_for(client.get(self.url, extensions=extensions), self.timeout_s)
        except asyncio.TimeoutError:
            return ProbeResult(False, time.monotonic() - start, error=f"timed out after {self.timeout_s:g} s")
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            return ProbeResult(False, time.monotonic() - start, error=describe(exc))
        latency = time.monotonic() - start
        if reply.status_code == 200:
            return ProbeResult(True, latency, 200)
        return ProbeResult(False, latency, reply.status_code, f"HTTP {reply.status_code}")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
