-- Client backends and parallel workers, minus pgparent's own session: one poll of pg_stat_activity.
-- Columns are in the order of exporter.model.Session's fields, then the server's clock. {leader_pid} and {query_id}
-- are the column, or NULL on servers that predate it (leader_pid: 13, query_id: 14).
-- Without pg_read_all_stats, other roles' rows show pid, user, database and application_name but a NULL
-- backend_type, state and backend_start: rows with a user and a database are kept as hidden client sessions
-- (counted, never signalled); background processes have no user or no database.
SELECT pid,
       {leader_pid},
       backend_type,
       datname,
       usename,
       application_name,
       host(client_addr),
       state,
       wait_event_type,
       backend_start,
       xact_start,
       query_start,
       state_change,
       left(query, %(query_chars)s),
       {query_id},
       now()
  FROM pg_catalog.pg_stat_activity
 WHERE pid <> pg_catalog.pg_backend_pid()
   AND (backend_type IN ('client backend', 'parallel worker')
        OR (backend_type IS NULL AND usename IS NOT NULL AND datname IS NOT NULL))
