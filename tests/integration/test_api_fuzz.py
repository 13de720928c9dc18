"""schemathesis against the OpenAPI of each service: requests generated from the schema (valid
and not), sent to the running service over HTTP with an admin key. No answer may be a 5xx.

The profile is seeded (the same requests every run): FUZZ_EXAMPLES per operation, 5 by
default here; `make fuzz` runs a long one (FUZZ_EXAMPLES=300, a new seed each run)."""
from __future__ import annotations

import os
from datetime import datetime, timezone

import httpx
import pytest
import schemathesis
from schemathesis.core import NotSet
from hypothesis import HealthCheck, given, settings

from shared.clock import ManualClock
from tests.support import FAST_KAFKA, api_key, running

# schemathesis's own strategies use `random` inside (its concern, not ours)
pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
SEEDED = os.environ.get("FUZZ_RANDOM") != "1"


def _service(name: str):
    from importlib import import_module

    bootstrap = import_module(f"services.{name}.bootstrap")
    settings_cls = next(v for k, v in vars(import_module(f"services.{name}.settings")).items()
                        if k.endswith("Settings") and k != "ServiceSettings")
    return bootstrap.build, settings_cls


@pytest.mark.parametrize("service", ["invoicing", "dunning", "risk", "notifier"])
async def test_no_request_the_schema_allows_or_not_gets_a_5xx(service, database, kafka_bootstrap, topic_prefix):
    build, settings_cls = _service(service)
    app = build(settings_cls(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                             kafka_partitions=1, poll_interval_seconds=0.2, rate_limit_per_minute=0, **FAST_KAFKA),
                ManualClock(datetime(2026, 3, 1, 9, tzinfo=timezone.utc)))
    async with running(app) as url:
        key = await api_key(app, "t1", "admin")
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            spec = (await http.get("/openapi.json")).json()
        schema = schemathesis.openapi.from_dict(spec)
        failures: list[str] = []
        operations = [result.ok() for result in schema.get_all_operations()]
        assert operations

        for operation in operations:
            if operation.path == "/metrics" or operation.path.startswith("/health/"):
                continue  # readiness answers 503 by design while a dependency is down

            @settings(max_examples=EXAMPLES, derandomize=SEEDED, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def check(case) -> None:
                kwargs = {"params": case.query or None,
                          "headers": {**{k: str(v) for k, v in (case.headers or {}).items()}, "X-API-Key": key}}
                if not isinstance(case.body, NotSet):
                    kwargs["json"] = case.body
                try:
                    with httpx.Client(base_url=url, timeout=30) as client:
                        r = client.request(case.method, case.formatted_path, **kwargs)
                except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
                    return  # the client refuses to send it: nothing reaches the service
                if r.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} {kwargs} -> {r.status_code} {r.text[:300]}")

            await _in_thread(check)
        assert not failures, "\n".join(failures[:20])


async def _in_thread(fn) -> None:
    """Hypothesis drives a sync function; the service runs on this event loop meanwhile."""
    import asyncio

    await asyncio.to_thread(fn)
