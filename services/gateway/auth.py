"""Bearer tokens -> tenants. Tokens are compared in constant time, every one of them on
every request (so the time taken does not say which token came close), and never logged."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from llmflow.services.gateway.settings import Credential


@dataclass(frozen=True, slots=True)
class Grant:
    """Who is asking: the tenant it acts as (None: an open gateway, every tenant)."""

    tenant: str | None
    replay: bool

    def sees(self, tenant: str | None) -> bool:
        """Whether a result of `tenant` is visible: its own tenant's only."""
        return self.tenant is None or tenant == self.tenant


OPEN = Grant(tenant=None, replay=True)
"""The grant of every request to a gateway run with `insecure_no_auth`."""


class Authenticator:
    """Answers a request's `Authorization` header with its grant, or None (401)."""

    def __init__(self, credentials: list[Credential], *, open_access: bool = False) -> None:
        self._tokens = [
            (c.token.get_secret_value().encode(), Grant(c.tenant, c.replay)) for c in credentials
        ]
        self._open = open_access

    def grant(self, authorization: str | None) -> Grant | None:
        if self._open:
            return OPEN
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = token.strip().encode("utf-8", "surrogateescape")
        found = None
        for secret, grant in self._tokens:
            if hmac.compare_digest(secret, given) and found is None:
                found = grant
        return found
