"""The audit log (`--audit-log PATH`): one JSON object per line per HTTP request.

Fields: time, request_id, server (the process that served it: `api-server-N`, `rank-R/api-server-N`
under the supervisor, or `supervisor`), api_server (its index; null for the supervisor), principal,
tenant, client, method, path, model, status, prompt_tokens, completion_tokens, latency_s. Never a
credential, a prompt or a completion. Lines are JSON with every non-ASCII and control character
escaped, so a crafted path or model name cannot forge a line. Every process appends with O_APPEND
and one write per line; SIGHUP reopens the file (for logrotate).

With `--audit-log-skip-probes` the supervisor's own health probes of its ranks leave no line. A
probe is recognised by what only the supervisor holds: a random token made at each supervisor
start, sent in the `x-bastion-probe` header of its `GET /health`; the ranks know only its SHA-256
(`ProbeToken`). A client cannot guess it, and even a request that had it would hide only a
`GET /health`: every other request of any client is written.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from bastion.security.keys import digest
from bastion.security.principal import Principal

logger = logging.getLogger(__name__)


@dataclass
class RequestRecord:
    """What one request contributes to its audit line, filled in as it is served."""

    request_id: str
    api_server: int | None
    method: str
    path: str
    client: str | None
    started: float
    principal: Principal | None = None
    server: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def line(self, status: int) -> dict:
        p = self.principal
        return {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "request_id": self.request_id, "server": self.server, "api_server": self.api_server,
                "principal": p.name if p else None,
                "tenant": p.tenant if p else None, "client": self.client, "method": self.method,
                "path": self.path, "model": self.model, "status": status,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "latency_s": round(time.monotonic() - self.started, 6)}


PROBE_HEADER = b"x-bastion-probe"
PROBE_PATH = "/health"


class ProbeToken:
    """The supervisor's credential for its probes: made fresh (`new`), held by the supervisor only;
    its ranks get `sha256` and check what a request presents (`is_probe`) in constant time."""

    def __init__(self, token: str) -> None:
        self.token, self.sha256 = token, digest(token)

    @classmethod
    def new(cls) -> "ProbeToken":
        return cls(secrets.token_urlsafe(32))


def is_probe(scope: dict, sha256: str | None) -> bool:
    """A `GET /health` presenting the token whose digest is `sha256` (an ASGI HTTP scope)."""
    if sha256 is None or scope["method"] != "GET" or scope["path"] != PROBE_PATH:
        return False
    presented = next((value for name, value in scope["headers"] if name == PROBE_HEADER), None)
    return presented is not None and hmac.compare_digest(hashlib.sha256(presented).hexdigest(), sha256)


class AuditLog:
    """An append-only JSON-lines file shared by every API-server process (and the supervisor)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, entry: dict) -> None:
        data = (json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                os.write(self._fd, data)
            except OSError as exc:
                logger.error("cannot write the audit log %s: %s", self.path, exc.strerror)

    def reopen(self) -> None:
        """Open the path again (after rotation moved the old file away)."""
        with self._lock:
            try:
                fd = self._open()
            except OSError as exc:
                logger.error("cannot reopen the audit log %s, still writing the old file: %s",
                             self.path, exc.strerror)
                return
            os.close(self._fd)
            self._fd = fd

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)
