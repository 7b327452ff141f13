"""Security settings of one server: TLS, credentials, limits, audit and internal channels.

These hold file paths and numbers only, never a secret: they travel to every API server in
its spec. Secrets are read from the files (or arrive as digests) in the process that uses them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SCOPES = ("inference", "metrics", "admin")
CERT_REQS = ("none", "optional", "required")
DEFAULT_MAX_TRACKED_PRINCIPALS = 100_000  # --max-tracked-principals; ~500 B each with two buckets


@dataclass(frozen=True)
class Limits:
    """Per-principal limits; None means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    max_waiting_requests: int | None = None  # NOTE: requests of this principal waiting for a slot

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests",
                     "max_waiting_requests"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def over(self, defaults: "Limits") -> "Limits":
        """These limits, with `defaults` where a value is unset."""
        return Limits(*(mine if mine is not None else theirs for mine, theirs in
                        zip(self.as_tuple(), defaults.as_tuple())))

    def as_tuple(self) -> tuple:
        return (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent_requests,
                self.max_waiting_requests)

    @property
    def unlimited(self) -> bool:
        return all(v is None for v in self.as_tuple())


@dataclass(frozen=True)
class TlsConfig:
    """`--ssl-*` flags: server certificate, optional client verification (mTLS) and refresh."""

    keyfile: str | None = None
    certfile: str | None = None
    keyfile_password_file: str | None = None
    ca_certs: str | None = None
    cert_reqs: str = "none"
    ciphers: str | None = None
    refresh: bool = False

    def __post_init__(self) -> None:
        if self.keyfile and not self.certfile:
            raise ValueError("--ssl-keyfile needs --ssl-certfile")
        if self.certfile and not self.keyfile:
            raise ValueError("--ssl-certfile needs --ssl-keyfile")
        if self.cert_reqs not in CERT_REQS:
            raise ValueError(f"--ssl-cert-reqs must be one of {', '.join(CERT_REQS)}, got {self.cert_reqs!r}")
        extras = {"--ssl-ca-certs": self.ca_certs, "--ssl-keyfile-password-file": self.keyfile_password_file,
                  "--ssl-ciphers": self.ciphers, "--enable-ssl-refresh": self.refresh,
                  "--ssl-cert-reqs": self.cert_reqs != "none"}
        for flag, value in extras.items():
            if value and not self.enabled:
                raise ValueError(f"{flag} needs --ssl-keyfile and --ssl-certfile")
        if self.cert_reqs != "none" and not self.ca_certs:
            raise ValueError(f"--ssl-cert-reqs {self.cert_reqs} needs --ssl-ca-certs (the CA that "
                             "signs client certificates)")

    @property
    def enabled(self) -> bool:
        return bool(self.keyfile and self.certfile)


@dataclass(frozen=True)
class JwtConfig:
    """`--jwt-*` flags: one verification key (a file), issuer and audience to require."""

    secret_file: str | None = None
    public_key_file: str | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = 30.0

    def __post_init__(self) -> None:
        if self.secret_file and self.public_key_file:
            raise ValueError("give either --jwt-secret-file or --jwt-public-key-file, not both")
        if not self.enabled and (self.issuer or self.audience):
            raise ValueError("--jwt-issuer/--jwt-audience need --jwt-secret-file or --jwt-public-key-file")
        if self.leeway_s < 0:
            raise ValueError(f"--jwt-leeway must be non-negative, got {self.leeway_s}")

    @property
    def enabled(self) -> bool:
        return bool(self.secret_file or self.public_key_file)


@dataclass(frozen=True)
class KeyDigest:
    """An API key as the server keeps it: a SHA-256 digest (hex) and what it grants."""

    name: str
    sha256: str
    scopes: tuple[str, ...] = SCOPES
    tenant: str = "default"
    models: tuple[str, ...] | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class SecurityConfig:
    """Everything about who may call, how much, and what is recorded."""

    tls: TlsConfig = field(default_factory=TlsConfig)
    jwt: JwtConfig = field(default_factory=JwtConfig)
    api_key_file: str | None = None
    # NOTE: digests of keys from BASTION_API_KEY / --api-key; the keys themselves never leave the launcher.
    extra_keys: tuple[KeyDigest, ...] = ()
    allow_insecure: bool = False
    default_limits: Limits = field(default_factory=Limits)
    max_concurrent_requests: int | None = None
    max_waiting_requests: int | None = None
    audit_log: str | None = None
    max_tracked_principals: int = DEFAULT_MAX_TRACKED_PRINCIPALS
    # NOTE: a supervised rank's only: the SHA-256 of the supervisor's probe token, whose probes
    # leave no audit line (--audit-log-skip-probes); the token itself never leaves the supervisor.
    audit_skip_probe_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.max_tracked_principals < 1:
            raise ValueError(f"--max-tracked-principals must be at least 1, got {self.max_tracked_principals}")
        if self.max_concurrent_requests is not None and self.max_concurrent_requests < 1:
            raise ValueError(f"--max-concurrent-requests must be at least 1, got {self.max_concurrent_requests}")
        if self.max_waiting_requests is not None and self.max_waiting_requests < 0:
            raise ValueError(f"--max-waiting-requests must be non-negative, got {self.max_waiting_requests}")
        if self.max_waiting_requests is not None and self.max_concurrent_requests is None:
            raise ValueError("--max-waiting-requests needs --max-concurrent-requests")

    @property
    def credentials_configured(self) -> bool:
        return bool(self.api_key_file or self.extra_keys or self.jwt.enabled)

    @property
    def limits_enabled(self) -> bool:
        return self.max_concurrent_requests is not None or not self.default_limits.unlimited \
            or self.credentials_configured
