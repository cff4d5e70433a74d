-- Client backends and parallel workers, minus pgparent's own session: one poll of pg_stat_activity.
-- Columns are in the order of exporter.model.Session's fields, then the server's clock. {leader_pid} and {query_id}
-- are the column, or NULL on servers that predate it (leader_pid: 13, query_id: 14).
-- {query} is the first %(query_bytes)s bytes of the query text as bytes (textsend: no character function walks a text
-- that a session of a database in another encoding may have left invalid; the client decodes it, replacing what is
-- not UTF-8), or NULL::bytea with audit.query_text: none. {comment_values}, {query_cut} and {comment_join} come from
-- activity_comments.sql when comment sources are configured, else NULL::text[], false and nothing.
-- Without pg_read_all_stats, other roles' rows show pid, user, database and application_name but a NULL
-- backend_type, state and backend_start: rows with a user and a database are kept as hidden client sessions
-- (counted, never signalled); background processes have no user or no database.
-- {database} narrows the poll to the DSN's database for a target with `sessions: database`, else is empty.
-- {recent} is empty, or for a glance between polls (exporter/run/monitor.py) keeps only the rows that connected,
-- began a transaction or began a query since %(recent_since)s: what a time limit shorter than the interval needs.
-- {backend_stats} is empty, or (PostgreSQL 18, exporter/core/cost.py) one more column: the backend's published
-- counters as int8[] (WAL bytes; bytes read, bytes written or extended, or NULLs when not asked for), read only for
-- backends that started or changed state since %(stats_since)s (NULL: every backend), which are the only ones that
-- may have published new ones; each pg_stat_get_backend_* call looks the pid up among every backend.
-- listening: an idle session whose last statement starts with LISTEN waits for notifications (budgets never trim
-- it). PostgreSQL shows no other session's channels, so its last statement is all there is: told on the server, so
-- it holds with audit.query_text: none and whatever the client's encoding. Not recognised: a LISTEN behind a leading
-- comment, or followed by any other statement (COMMIT after a LISTEN in a transaction, a pool's health check).
-- superuser: the session's role is a superuser, or it has none (a role dropped while its session stays connected):
-- on a managed server, the provider's own sessions, which pgparent's role there may not signal (protect.superusers).
-- usesysid is shown for other roles' rows too. The superusers' oids are read once per statement (an InitPlan: ARRAY
-- of a subquery), then each row compares its usesysid with those few; `IN (SELECT ...)` is planned as a subplan
-- scanning pg_roles again for every row, as the planner counts on few rows from pg_stat_activity.
-- {connections} is connections.sql (the client backends counting against max_connections, server-wide) for a target
-- with `sessions: database`, else NULL::int: a whole-server poll's rows are those backends but pgparent's own.
SELECT a.pid,
       {leader_pid},
       a.backend_type,
       a.datname,
       a.usename,
       a.application_name,
       host(a.client_addr),
       a.state,
       a.wait_event_type,
       a.backend_start,
       a.xact_start,
       a.query_start,
       a.state_change,
       {query},
       {query_id},
       {comment_values},
       {query_cut},
       coalesce(a.state = 'idle' AND a.query ~* '^\s*listen\s', false),
       a.usename IS NULL OR a.usesysid = ANY (ARRAY(SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolsuper)),
       now(),
       {connections}{backend_stats}
  FROM pg_catalog.pg_stat_activity AS a
{comment_join}
 WHERE a.pid <> pg_catalog.pg_backend_pid()
   AND (a.backend_type IN ('client backend', 'parallel worker')
        OR (a.backend_type IS NULL AND a.usename IS NOT NULL AND a.datname IS NOT NULL))
{database}
{recent}
