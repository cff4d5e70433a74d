-- Become the enforcing replica: a session-level advisory lock, held until this connection ends.
SELECT pg_catalog.pg_try_advisory_lock(%(key)s)
