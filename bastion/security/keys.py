"""API keys: the TOML key file, keys from the environment, and constant-time lookup.

Key file (``--api-key-file``)::

    [defaults]                       # optional: limits for keys that set none
    requests_per_minute = 600

    [keys.alice]
    sha256 = "9f86d081..."           # hex SHA-256 of the key: printf %s KEY | sha256sum, or:
    # key = "sk-..."                 # the key itself (the file must then be private)
    tenant = "acme"
    scopes = ["inference", "metrics"]   # any of inference, metrics, admin
    models = ["llama-3-8b"]          # optional: inference only on these served names
    requests_per_minute = 60
    tokens_per_minute = 20000
    max_concurrent_requests = 4
    max_waiting_requests = 8         # of its requests waiting for an engine slot (beyond: 429)

Only digests are kept in memory; a presented key is hashed and compared with every digest in
constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import tomllib
from pathlib import Path

from bastion.config.security import SCOPES, KeyDigest, Limits

logger = logging.getLogger(__name__)

ENV_VAR = "BASTION_API_KEY"
_KEY_FIELDS = {"sha256", "key", "tenant", "scopes", "models", "requests_per_minute",
               "tokens_per_minute", "max_concurrent_requests", "max_waiting_requests"}
_LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests",
                 "max_waiting_requests")


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the file and the entry, never a key."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def secret_keys(text: str, name: str) -> tuple[KeyDigest, ...]:
    """Full-access keys from a comma-separated list (BASTION_API_KEY or --api-key)."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    return tuple(KeyDigest(f"{name}-{i + 1}" if len(keys) > 1 else name, digest(k))
                 for i, k in enumerate(keys))


def env_keys() -> tuple[KeyDigest, ...]:
    return secret_keys(os.environ.get(ENV_VAR, ""), "env")


def load_key_file(path: str) -> tuple[KeyDigest, ...]:
    """Parse and validate the key file; KeyFileError names the file and the entry."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise KeyFileError(f"cannot read the key file {path} (--api-key-file): {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"the key file {path} (--api-key-file) is not valid TOML: {exc}") from None
    unknown = set(data) - {"defaults", "keys"}
    if unknown:
        raise KeyFileError(f"{path}: unknown section(s) {sorted(unknown)}; use [defaults] and [keys.NAME]")
    defaults = _limits(data.get("defaults", {}), f"{path} [defaults]")
    entries = data.get("keys", {})
    if not isinstance(entries, dict) or not entries:
        raise KeyFileError(f"{path}: no keys; add a [keys.NAME] table per key")
    keys = tuple(_entry(name, entry, f"{path} [keys.{name}]", defaults) for name, entry in entries.items())
    seen: dict[str, str] = {}
    for key in keys:
        if key.sha256 in seen:
            raise KeyFileError(f"{path}: keys '{seen[key.sha256]}' and '{key.name}' are the same key")
        seen[key.sha256] = key.name
    return keys


def _entry(name: str, entry, where: str, defaults: Limits) -> KeyDigest:
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: must be a table")
    unknown = set(entry) - _KEY_FIELDS
    if unknown:
        raise KeyFileError(f"{where}: unknown field(s) {sorted(unknown)}")
    if ("sha256" in entry) == ("key" in entry):
        raise KeyFileError(f"{where}: give exactly one of 'sha256' or 'key'")
    if "key" in entry:
        if not isinstance(entry["key"], str) or len(entry["key"]) < 16:
            raise KeyFileError(f"{where}: 'key' must be a string of at least 16 characters")
        sha = digest(entry["key"])
    else:
        sha = str(entry["sha256"]).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise KeyFileError(f"{where}: 'sha256' must be 64 hex digits")
    scopes = entry.get("scopes", ["inference"])
    if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
        raise KeyFileError(f"{where}: 'scopes' must be a non-empty list of {', '.join(SCOPES)}")
    models = entry.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise KeyFileError(f"{where}: 'models' must be a list of served model names")
    tenant = entry.get("tenant", name)
    if not isinstance(tenant, str) or not tenant:
        raise KeyFileError(f"{where}: 'tenant' must be a non-empty string")
    return KeyDigest(name, sha, tuple(scopes), tenant, tuple(models) if models is not None else None,
                     _limits(entry, where).over(defaults))


def _limits(table, where: str) -> Limits:
    if not isinstance(table, dict):
        raise KeyFileError(f"{where}: must be a table")
    try:
        return Limits(*(table.get(f) for f in _LIMIT_FIELDS))
    except ValueError as exc:
        raise KeyFileError(f"{where}: {exc}") from None


class KeyTable:
    """Finds the key a client presented, comparing its digest with every entry in constant time."""

    def __init__(self, keys: tuple[KeyDigest, ...]) -> None:
        self.keys = keys
        self._digests = [bytes.fromhex(k.sha256) for k in keys]

    def find(self, presented: str) -> KeyDigest | None:
        candidate = hashlib.sha256(presented.encode()).digest()
        found = None
        for key, stored in zip(self.keys, self._digests):
            if hmac.compare_digest(candidate, stored) and found is None:
                found = key  # NOTE: no early exit: every entry is compared
        return found
