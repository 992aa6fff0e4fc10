"""How many streams (result streams and console pages) are open, in all and per tenant.

Every open stream costs a task, a queue and a share of each result's fan-out: without a
bound, one token could open them until the gateway answers nobody."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from llmflow.services.gateway.auth import Grant


class Full(Exception):
    """No stream slot for this tenant now; the message says which bound was reached."""


class StreamSlots:
    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self.open = 0
        self._by_tenant: Counter[str | None] = Counter()

    @contextmanager
    def take(self, grant: Grant) -> Iterator[None]:
        """Holds one slot while the stream runs; Full when none is free."""
        tenant = grant.tenant
        if self.open >= self.total:
            raise Full(f"{self.open} streams are open, the gateway's most")
        if tenant is not None and self._by_tenant[tenant] >= self.per_tenant:
            raise Full(f"tenant {tenant} has {self.per_tenant} streams open, its most")
        self.open += 1
        self._by_tenant[tenant] += 1
        try:
            yield
        finally:
            self.open -= 1
            self._by_tenant[tenant] -= 1
            if not self._by_tenant[tenant]:
                del self._by_tenant[tenant]
