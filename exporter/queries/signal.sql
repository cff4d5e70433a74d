-- Signal one client backend, only if it is still the very session the poll saw: same pid, same backend_start, same
-- application_name. A pid reused by a new session, or a session that changed its tag, matches no row and is left
-- alone. No row back means "gone"; false means PostgreSQL did not signal it. {function} is pg_terminate_backend or
-- pg_cancel_backend.
SELECT {function}(pid)
  FROM pg_catalog.pg_stat_activity
 WHERE pid = %(pid)s
   AND backend_start = %(backend_start)s
   AND application_name = %(application_name)s
   AND backend_type = 'client backend'
   AND pid <> pg_catalog.pg_backend_pid()
