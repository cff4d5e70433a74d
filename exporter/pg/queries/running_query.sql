-- The query a session runs now, read by the memory sampler just before it cancels a session whose memory crossed a
-- limit between polls (the poll may have seen it idle, or in an earlier query): its query_start becomes the cancel's
-- guard, so the cancel lands on that very query or on nothing. The same pid, backend_start and application_name as
-- the poll saw, or no row: a pid reused by another session, or a session that changed its tag, is left alone.
SELECT query_start
  FROM pg_catalog.pg_stat_activity
 WHERE pid = %(pid)s
   AND backend_start = %(backend_start)s
   AND application_name = %(application_name)s
   AND backend_type = 'client backend'
   AND state IN ('active', 'fastpath function call')
