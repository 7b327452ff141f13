"""The security pieces one HTTP server runs: credentials, TLS, limits client, audit log."""
from __future__ import annotations

from bastion.config.security import SecurityConfig
from bastion.security.audit import AuditLog
from bastion.security.auth import Authenticator
from bastion.security.shared_limits import LimitsClient
from bastion.security.tls import TlsRefresher, build_context
from bastion.security.watch import FileWatch


class SecurityRuntime:
    """One HTTP server's security pieces: credentials (reloaded when the key file changes), TLS
    context (hot refresh when asked), shared limits client and audit log (when configured)."""

    def __init__(self, sec: SecurityConfig, limits_dir: str | None = None) -> None:
        self.authenticator = Authenticator(sec)
        self.key_watch = (FileWatch([sec.api_key_file], self.authenticator.reload, "key-file-watch")
                          if sec.api_key_file else None)
        self.refresher = TlsRefresher(sec.tls) if sec.tls.enabled and sec.tls.refresh else None
        self.ssl_context = (self.refresher.context if self.refresher
                            else build_context(sec.tls) if sec.tls.enabled else None)
        self.limits = LimitsClient(limits_dir) if limits_dir else None
        self.audit = AuditLog(sec.audit_log) if sec.audit_log else None

    def hangup(self) -> None:
        self.authenticator.reload()
        if self.audit is not None:
            self.audit.reopen()

    def close(self) -> None:
        for part in (self.key_watch, self.refresher):
            if part is not None:
                part.stop()
        if self.limits is not None:
            self.limits.close()
        if self.audit is not None:
            self.audit.close()
