"""Prometheus metrics shared by every service (label `service` tells them apart)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OUTBOX_BACKLOG = Gauge("tahsilat_outbox_backlog", "Outbox rows not yet published", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "tahsilat_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row", ["service"]
)
OUTBOX_PUBLISHED = Counter("tahsilat_outbox_published_total", "Outbox rows published", ["service"])
OUTBOX_FAILURES = Counter("tahsilat_outbox_publish_failures_total", "Failed publish attempts", ["service"])
EVENTS_CONSUMED = Counter(
    "tahsilat_events_consumed_total", "Events handled by a consumer", ["service", "consumer", "type", "outcome"]
)
EVENT_HANDLER_SECONDS = Histogram(
    "tahsilat_event_handler_seconds", "Time to handle one event", ["service", "consumer"]
)
DEAD_LETTERED = Counter("tahsilat_dead_lettered_total", "Records sent to the dead-letter topic", ["service", "consumer"])
TIMERS_FIRED = Counter("tahsilat_timers_fired_total", "Durable timers fired", ["service", "timer"])
