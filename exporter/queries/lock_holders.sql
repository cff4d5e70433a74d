-- How many sessions of this database hold the advisory lock %(key)s (a bigint key is split into classid, the high
-- 32 bits, and objid, the low 32 bits, with objsubid 1): the live replicas, for the shared member lock.
SELECT count(*)::int
  FROM pg_catalog.pg_locks
 WHERE locktype = 'advisory'
   AND granted
   AND objsubid = 1
   AND classid = ((%(key)s::bigint >> 32) & 4294967295)::oid
   AND objid = (%(key)s::bigint & 4294967295)::oid
   AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
