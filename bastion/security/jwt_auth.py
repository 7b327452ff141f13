"""JWT bearer tokens (PyJWT): HS256 with a shared secret file, or RS256/ES256 with a public key.

Claims: `sub` names the principal; `tenant` (default: `sub`); `scope` (space-separated, as
OAuth) or `scopes` (a list), default `inference`; `models` (a list of served names);
`requests_per_minute`, `tokens_per_minute`, `max_concurrent_requests`, `max_waiting_requests`. `exp` is required;
`nbf`, `iss` and `aud` are checked, with `--jwt-leeway` seconds of clock skew.
"""
from __future__ import annotations

from pathlib import Path

import jwt

from bastion.config.security import SCOPES, JwtConfig, Limits
from bastion.security.principal import Principal

HMAC_ALGORITHMS = ["HS256"]
PUBLIC_KEY_ALGORITHMS = ["RS256", "ES256"]


class TokenRejected(Exception):
    """A token that does not verify; the message says why, never echoing the token."""


class JwtVerifier:
    """Verifies bearer JWTs against one key read from a file (re-read by `load`)."""

    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self.key: str | bytes = b""
        self.algorithms = HMAC_ALGORITHMS if config.secret_file else PUBLIC_KEY_ALGORITHMS
        self.load()

    def load(self) -> None:
        """(Re-)read the key file; ValueError names the flag and file."""
        path = self.config.secret_file or self.config.public_key_file
        flag = "--jwt-secret-file" if self.config.secret_file else "--jwt-public-key-file"
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path} ({flag}): {exc.strerror}") from None
        if self.config.secret_file:
            key: str | bytes = data.strip()
            if len(key) < 32:
                raise ValueError(f"{path} ({flag}) holds fewer than 32 bytes; use a longer secret")
        else:
            key = data.decode(errors="replace")
            try:
                jwt.algorithms.get_default_algorithms()["RS256"].prepare_key(key)
            except Exception:
                try:
                    jwt.algorithms.get_default_algorithms()["ES256"].prepare_key(key)
                except Exception:
                    raise ValueError(f"{path} ({flag}) is not a PEM RSA or EC public key") from None
        self.key = key

    def verify(self, token: str) -> Principal:
        cfg = self.config
        try:
            claims = jwt.decode(token, self.key, algorithms=self.algorithms, issuer=cfg.issuer,
                                audience=cfg.audience, leeway=cfg.leeway_s,
                                options={"require": ["exp", "sub"], "verify_aud": cfg.audience is not None})
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"invalid token: {exc}") from None
        return _principal(claims)


def _principal(claims: dict) -> Principal:
    scope = claims.get("scope")
    scopes = scope.split() if isinstance(scope, str) else claims.get("scopes", ["inference"])
    if not isinstance(scopes, list) or any(s not in SCOPES for s in scopes):
        raise TokenRejected(f"invalid token: scopes must be among {', '.join(SCOPES)}")
    models = claims.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise TokenRejected("invalid token: 'models' must be a list of names")
    try:
        limits = Limits(*(claims.get(f) for f in ("requests_per_minute", "tokens_per_minute",
                                                   "max_concurrent_requests", "max_waiting_requests")))
    except ValueError as exc:
        raise TokenRejected(f"invalid token: {exc}") from None
    sub = str(claims["sub"])
    return Principal(sub, "jwt", str(claims.get("tenant", sub)), frozenset(scopes),
                     tuple(models) if models is not None else None, limits)
