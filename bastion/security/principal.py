"""Who is calling: the principal an API key or a JWT resolves to."""
from __future__ import annotations

from dataclasses import dataclass, field

from bastion.config.security import SCOPES, KeyDigest, Limits


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `name` is safe to log; it is never the credential."""

    name: str
    kind: str  # "key", "jwt" or "anonymous"
    tenant: str
    scopes: frozenset[str]
    models: tuple[str, ...] | None = None
    limits: Limits = field(default_factory=Limits)

    @property
    def limit_key(self) -> str:
        """Identity for rate limits: a key and a JWT subject of the same name stay apart."""
        return f"{self.kind}:{self.name}"

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    @classmethod
    def from_key(cls, key: KeyDigest, defaults: Limits) -> "Principal":
        return cls(key.name, "key", key.tenant, frozenset(key.scopes), key.models, key.limits.over(defaults))

    @classmethod
    def anonymous(cls, defaults: Limits) -> "Principal":
        """The caller when no credential is configured (loopback or --allow-insecure)."""
        return cls("anonymous", "anonymous", "default", frozenset(SCOPES), None, defaults)
