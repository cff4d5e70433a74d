-- Who blocks the sessions that wait on a heavyweight lock: run only when the poll saw such waiters, for those pids.
-- One row per (waiter, blocker) from pg_blocking_pids(); a waiter that stopped waiting since the poll has no row.
-- blocker 0 is a prepared transaction (its locks belong to no backend). The blocker's backend_type (a client session,
-- or autovacuum, a walsender or any other process that must never be signalled) is filled in by the caller from the
-- poll, or from queries/backend_types.sql for a pid the poll did not see. The wait start is
-- pg_locks.waitstart (PostgreSQL 14+); {waitstart} is that column, or NULL on older servers, where the caller falls
-- back to the waiting query's query_start (an upper bound on the wait). The lock is the waiter's ungranted one.
-- pg_locks is read once (MATERIALIZED), not once per waiter: it walks the whole lock table on each call. Nothing here
-- reads pg_stat_activity: any read of it copies every backend's status, as costly as the poll itself.
WITH waiter AS (
    SELECT w.pid, b.blocker
      FROM unnest(%(pids)s::int[]) AS w(pid)
     CROSS JOIN LATERAL unnest(pg_catalog.pg_blocking_pids(w.pid)) AS b(blocker)
), ungranted AS MATERIALIZED (
    SELECT DISTINCT ON (pid) pid, {waitstart} AS waitstart, locktype, relation, mode
      FROM pg_catalog.pg_locks
     WHERE NOT granted AND pid = ANY(%(pids)s::int[])
     ORDER BY pid
)
SELECT waiter.pid AS pid,
       waiter.blocker AS blocker,
       NULL::text AS blocker_type,
       ungranted.waitstart AS waitstart,
       ungranted.locktype AS locktype,
       CASE WHEN ungranted.relation IS NOT NULL THEN ungranted.relation::regclass::text END AS relation,
       ungranted.mode AS mode
  FROM waiter
  LEFT JOIN ungranted ON ungranted.pid = waiter.pid
