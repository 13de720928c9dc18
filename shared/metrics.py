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
OUTBOX_HELD = Gauge(
    "tahsilat_outbox_held_events", "Outbox rows that failed to publish and hold back the later events of their key",
    ["service"])
OUTBOX_HELD_KEYS = Gauge("tahsilat_outbox_held_keys", "Keys whose events are held back by a failed row", ["service"])
OUTBOX_RELAY_LEADER = Gauge(
    "tahsilat_outbox_relay_leader", "1 while this process's relay owns the outbox (one relay per database)", ["service"])
CONSUMER_RETRIES = Counter(
    "tahsilat_consumer_retries_total",
    "Batches retried: transient (database away), split (looking for the record at fault), record (one record again)",
    ["service", "consumer", "reason"])
CONSUMER_COMMIT_FAILURES = Counter(
    "tahsilat_consumer_commit_failures_total", "Offset commits refused (a rebalance); the records come again",
    ["service", "consumer"])
CONSUMER_BATCH_RECORDS = Histogram(
    "tahsilat_consumer_batch_records", "Records per poll batch", ["service", "consumer"],
    buckets=(1, 5, 10, 50, 100, 500, 1000, 2000, 5000, 10000))
CONSUMER_LAG = Gauge("tahsilat_consumer_lag_records", "Records on the broker not yet handled", ["service", "consumer"])
TASK_RESTARTS = Counter("tahsilat_task_restarts_total", "Background tasks that died and were restarted",
                        ["service", "task"])
INBOX_PRUNED = Counter("tahsilat_inbox_pruned_total", "Inbox rows forgotten after the retention", ["service"])
