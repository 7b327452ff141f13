"""Who is calling and what they may spend: resolved once per request, then passed on as a value.

The HTTP layer makes a `Caller` from what its middleware stored on the request
(`http.middleware.caller_of`); the front end checks model access and acquires limits with it,
and the engine sees only its opaque prefix-cache salt.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bastion.config.security import Limits
from bastion.security.audit import RequestRecord
from bastion.security.principal import Principal


@dataclass(frozen=True)
class Caller:
    """An authenticated caller of one request.

    NOTE: `record` is this request's audit line, filled in as the request is served (the model
    by the front end, the token counts when its generation is settled); the Caller itself never
    changes.
    """

    principal: Principal
    cache_salt: str
    record: RequestRecord | None = None

    @classmethod
    def of(cls, principal: Principal, record: RequestRecord | None = None) -> Caller:
        return cls(principal, tenant_salt(principal.tenant), record)

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def limit_key(self) -> str:
        return self.principal.limit_key

    @property
    def limits(self) -> Limits:
        return self.principal.limits

    def may_use(self, model: str) -> bool:
        return self.principal.may_use(model)


def tenant_salt(tenant: str) -> str:
    """The engine's prefix-cache salt for `tenant`: tenants never share cached KV, and the engine
    sees an opaque value, never the tenant's name."""
    return hashlib.sha256(b"bastion-tenant\x00" + tenant.encode()).hexdigest()
