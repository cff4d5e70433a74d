-- Signal one client backend, only if it is still the very session the poll saw: same pid, same backend_start, same
-- application_name. A pid reused by a new session, or a session that changed its tag, matches no row and is left
-- alone. No row back means "gone"; false means PostgreSQL did not signal it. {function} is pg_terminate_backend or
-- pg_cancel_backend.
-- The optional guards (NULL: not checked) close the races of a session that moved on since the poll:
--   query_start: still running the very query the poll saw (a cancel, or a query-duration deadline, must not land
--                on the next query, which a pooled server connection may be running for another client);
--   xact_start: still in the very transaction (a transaction-duration rule must not end the next one);
--   state_change: still in the very idle spell since that moment (it has run nothing since): idle in the same
--                transaction (spell 'idle in transaction%'), or, for a budget's trim, idle outside one
--                (spell 'idle': a session that turned active, even if idle again by now, is left alone);
--   exceeded + since: on the server's clock now, the guarded moment is more than `exceeded` seconds ago (a deadline
--                acts only once the limit is really crossed);
--   database_only: the session is in this connection's database (a target with `sessions: database` signals
--                nothing outside its own database, whatever pid it is given).
SELECT {function}(pid)
  FROM pg_catalog.pg_stat_activity
 WHERE pid = %(pid)s
   AND backend_start = %(backend_start)s
   AND application_name = %(application_name)s
   AND backend_type = 'client backend'
   AND pid <> pg_catalog.pg_backend_pid()
   AND (NOT %(database_only)s OR datname = pg_catalog.current_database())
   AND (%(query_start)s::timestamptz IS NULL
        OR (query_start = %(query_start)s::timestamptz AND state IN ('active', 'fastpath function call')))
   AND (%(xact_start)s::timestamptz IS NULL OR xact_start = %(xact_start)s::timestamptz)
   AND (%(state_change)s::timestamptz IS NULL
        OR (state_change = %(state_change)s::timestamptz AND state LIKE %(spell)s))
   AND (%(exceeded)s::float8 IS NULL
        OR now() - %(since)s::timestamptz > make_interval(secs => %(exceeded)s::float8))
