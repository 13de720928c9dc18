"""Early-warning facts are forgotten by the stream's own time (the latest fact recorded), not the
wall clock: a rebuild folding years-old events keeps what their decisions look back at."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from services.risk.adapters.warnings import prune_observations
from services.risk.bootstrap import MIGRATIONS
from services.risk.entrypoints.warnings import OBSERVATIONS_KEPT
from services.risk.domain.warnings import NORM_PERIOD
from shared.db import create_pool, migrate

pytestmark = pytest.mark.integration

LATEST = datetime(2021, 6, 1, tzinfo=timezone.utc)  # long ago: the wall clock must not matter


async def test_old_facts_are_forgotten_relative_to_the_latest_fact_in_bounded_deletes(database: str):
    await migrate(database, MIGRATIONS)
    pool = await create_pool(database, max_size=1)
    try:
        ages = [0, 30, 364, 424, 426, 800, 2000]  # days before the latest fact
        await pool.execute(
            "INSERT INTO risk_signal_observations (tenant_id, customer_id, kind, event_id, at, ref)"
            " SELECT 't1', 'c1', 'invoiced', e, at, 'i' FROM unnest($1::uuid[], $2::timestamptz[]) AS x(e, at)",
            [uuid.uuid4() for _ in ages], [LATEST - timedelta(days=d) for d in ages])
        assert OBSERVATIONS_KEPT >= NORM_PERIOD + timedelta(days=30)  # a norm plus the longest window

        assert await prune_observations(pool, OBSERVATIONS_KEPT, limit=2) == 2
        assert await prune_observations(pool, OBSERVATIONS_KEPT, limit=2) == 1
        assert await prune_observations(pool, OBSERVATIONS_KEPT, limit=2) == 0
        left = sorted((LATEST - r["at"]).days for r in await pool.fetch("SELECT at FROM risk_signal_observations"))
        assert left == [0, 30, 364, 424]
    finally:
        await pool.close()
