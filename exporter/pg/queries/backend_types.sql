-- The backend_type of blockers the poll did not see (autovacuum, a walsender, a session that started since).
SELECT pid, backend_type FROM pg_catalog.pg_stat_activity WHERE pid = ANY(%(pids)s::int[])
