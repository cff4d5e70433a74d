-- How many sessions of this database hold each of two advisory locks: %(member)s (shared: the live replicas, when
-- sharding) and %(leader)s (exclusive: 1 while a replica leads this target). A bigint key is split into classid, the
-- high 32 bits, and objid, the low 32 bits, with objsubid 1. pg_locks is walked once for both.
SELECT count(*) FILTER (WHERE k.key = %(member)s::bigint)::int AS members,
       count(*) FILTER (WHERE k.key = %(leader)s::bigint)::int AS leaders
  FROM pg_catalog.pg_locks AS l
  JOIN (VALUES (%(member)s::bigint), (%(leader)s::bigint)) AS k(key)
    ON l.classid = ((k.key >> 32) & 4294967295)::oid AND l.objid = (k.key & 4294967295)::oid
 WHERE l.locktype = 'advisory'
   AND l.granted
   AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
