"""Authentication and authorization: credentials -> Principal, and each route's auth decision.

Every route declares a decision with `@public` or `@requires(*scopes)`; the guard middleware
refuses to serve a route without one (fail closed), and a test walks every route of the app.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from bastion.config.security import SCOPES, SecurityConfig
from bastion.security.jwt_auth import JwtVerifier, TokenRejected
from bastion.security.keys import KeyFileError, KeyTable, load_key_file
from bastion.security.principal import Principal

logger = logging.getLogger(__name__)

PUBLIC = "public"
AUTHENTICATED = "authenticated"  # any valid credential, no scope (unknown paths, before their 404)
NO_DECISION = "no-decision"  # a route nobody declared: refused to everyone
_DECISION = "__bastion_auth__"


def public(endpoint: Callable) -> Callable:
    """Mark a route as open to anyone (health and version only)."""
    setattr(endpoint, _DECISION, PUBLIC)
    return endpoint


def requires(*scopes: str) -> Callable[[Callable], Callable]:
    """Mark a route as needing a credential with any one of `scopes`."""
    assert scopes and all(scope in SCOPES for scope in scopes), scopes

    def mark(endpoint: Callable) -> Callable:
        setattr(endpoint, _DECISION, tuple(scopes))
        return endpoint
    return mark


def decision_of(endpoint: Callable) -> str | tuple[str, ...] | None:
    return getattr(endpoint, _DECISION, None)


class AuthError(Exception):
    """401 (no or bad credential) or 403 (valid credential without the scope or model)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Authenticator:
    """Resolves request headers to a Principal using the keys and the JWT key it holds."""

    def __init__(self, config: SecurityConfig) -> None:
        self.config = config
        self.jwt = JwtVerifier(config.jwt) if config.jwt.enabled else None
        self.table = KeyTable(self._load_keys())

    @property
    def enabled(self) -> bool:
        return self.config.credentials_configured

    def _load_keys(self):
        file_keys = load_key_file(self.config.api_key_file) if self.config.api_key_file else ()
        return file_keys + self.config.extra_keys

    def reload(self) -> bool:
        """Re-read the key file and the JWT key; on any error keep the old ones and log why."""
        try:
            table = KeyTable(self._load_keys())
            if self.jwt is not None:
                self.jwt.load()
        except (KeyFileError, ValueError) as exc:
            logger.error("credentials not reloaded, keeping the previous ones: %s", exc)
            return False
        self.table = table
        logger.warning("credentials reloaded: %d key(s)", len(table.keys))
        return True

    def authenticate(self, headers: dict[bytes, bytes]) -> Principal:
        """The caller's Principal; AuthError(401) when the credential is missing or wrong."""
        defaults = self.config.default_limits
        if not self.enabled:
            return Principal.anonymous(defaults)
        presented = _credential(headers)
        if presented is None:
            raise AuthError(401, "missing credentials: send 'Authorization: Bearer <key or token>' "
                                 "or 'x-api-key: <key>'")
        key = self.table.find(presented)
        if key is not None:
            return Principal.from_key(key, defaults)
        if self.jwt is not None and presented.count(".") == 2:
            try:
                principal = self.jwt.verify(presented)
            except TokenRejected as exc:
                raise AuthError(401, str(exc)) from None
            return dataclasses.replace(principal, limits=principal.limits.over(defaults))
        raise AuthError(401, "invalid credentials")

    @staticmethod
    def authorize(principal: Principal, decision: str | tuple[str, ...]) -> None:
        if decision in (PUBLIC, AUTHENTICATED):
            return
        if decision == NO_DECISION:
            raise AuthError(403, "this route has no auth decision and is refused to everyone")
        scopes = (decision,) if isinstance(decision, str) else decision
        if not principal.scopes.intersection(scopes):
            wanted = " or ".join(f"'{scope}'" for scope in scopes)
            raise AuthError(403, f"the credential of '{principal.name}' lacks the {wanted} scope")


def _credential(headers: dict[bytes, bytes]) -> str | None:
    """The credential a request presents: `Authorization: Bearer X` (OpenAI's clients) or
    `x-api-key: X` (Anthropic's), read the same way; both at once must agree, else a 401 (which
    of two different credentials the client meant is not ours to guess)."""
    bearer, key = None, headers.get(b"x-api-key")
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, value = auth.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            bearer = value.strip()
    key = key.decode("latin-1").strip() if key is not None and key.strip() else None
    if bearer is not None and key is not None and bearer != key:
        raise AuthError(401, "'Authorization: Bearer' and 'x-api-key' carry different credentials: "
                             "send one of them")
    return bearer if bearer is not None else key
