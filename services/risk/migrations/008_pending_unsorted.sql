-- The events staged since the last fold get their sort time (adapters/pending.assign_sort_times):
-- found through this index rather than by reading every event still waiting for its turn.
CREATE INDEX risk_pending_events_unsorted ON risk_pending_events (topic, partition, "offset")
    WHERE sort_time IS NULL;
