"""Share a few slots (database writers) fairly between tenants."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class TenantGate:
    """At most `total` holders at once, and at most `per_tenant` of them one tenant's. A tenant's
    extra work queues behind its own slots, never in the shared queue, so one tenant's ten big
    bulk requests keep no other tenant waiting longer than one unit of work."""

    def __init__(self, total: int, per_tenant: int | None = None) -> None:
        self.total = total
        self.per_tenant = max(1, min(per_tenant or total - 1, total))
        self._shared = asyncio.Semaphore(total)
        self._tenants: dict[str, tuple[asyncio.Semaphore, int]] = {}  # tenant -> (its slots, users)

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        own, users = self._tenants.get(tenant, (None, 0))
        if own is None:
            own = asyncio.Semaphore(self.per_tenant)
        self._tenants[tenant] = (own, users + 1)
        try:
            async with own, self._shared:
                yield
        finally:
            own, users = self._tenants[tenant]
            if users == 1:
                del self._tenants[tenant]  # forget idle tenants: the map stays as small as the work
            else:
                self._tenants[tenant] = (own, users - 1)
