-- Count this replica in (sharding): a shared session-level advisory lock every replica holds on each target it
-- reaches; the server drops it when the connection ends, so its holders are the live replicas.
SELECT pg_catalog.pg_try_advisory_lock_shared(%(key)s)
