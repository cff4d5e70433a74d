-- Who blocks the sessions that wait on a heavyweight lock: run only when the poll saw such waiters, for those pids.
-- One row per (waiter, blocker) from pg_blocking_pids(); a waiter that stopped waiting since the poll has no row.
-- blocker 0 is a prepared transaction (its locks belong to no backend). The blocker's backend_type tells a client
-- session from autovacuum, a walsender or any other process that must never be signalled. The wait start is
-- pg_locks.waitstart (PostgreSQL 14+); {waitstart} is that column, or NULL on older servers, where the caller falls
-- back to the waiting query's query_start (an upper bound on the wait). The lock is the waiter's ungranted one.
SELECT w.pid AS pid,
       b.blocker AS blocker,
       ba.backend_type AS blocker_type,
       l.waitstart AS waitstart,
       l.locktype AS locktype,
       CASE WHEN l.relation IS NOT NULL THEN l.relation::regclass::text END AS relation,
       l.mode AS mode
  FROM unnest(%(pids)s::int[]) AS w(pid)
 CROSS JOIN LATERAL unnest(pg_catalog.pg_blocking_pids(w.pid)) AS b(blocker)
  LEFT JOIN pg_catalog.pg_stat_activity AS ba ON ba.pid = b.blocker
  LEFT JOIN LATERAL (SELECT {waitstart} AS waitstart, locktype, relation, mode
                       FROM pg_catalog.pg_locks
                      WHERE pid = w.pid AND NOT granted
                      LIMIT 1) AS l ON true
