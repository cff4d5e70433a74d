-- The {backend_stats} column of activity.sql: WAL bytes, and the bytes read and written or extended summed over the
-- backend's pg_stat_get_backend_io rows (every object and context), as int8[].
       CASE WHEN %(stats_since)s::timestamptz IS NULL OR a.backend_start >= %(stats_since)s::timestamptz
                 OR a.state_change >= %(stats_since)s::timestamptz
            THEN (SELECT ARRAY[w.wal_bytes::int8, io.read_bytes, io.written_bytes]
                    FROM pg_catalog.pg_stat_get_backend_wal(a.pid) AS w,
                         LATERAL (SELECT sum(i.read_bytes)::int8 AS read_bytes,
                                         (coalesce(sum(i.write_bytes), 0) + coalesce(sum(i.extend_bytes), 0))::int8
                                           AS written_bytes
                                    FROM pg_catalog.pg_stat_get_backend_io(a.pid) AS i) AS io) END
