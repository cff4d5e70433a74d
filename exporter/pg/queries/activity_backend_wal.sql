-- The {backend_stats} column of activity.sql where /proc/<pid>/io gives bytes read and written: WAL bytes only.
       CASE WHEN %(stats_since)s::timestamptz IS NULL OR a.backend_start >= %(stats_since)s::timestamptz
                 OR a.state_change >= %(stats_since)s::timestamptz
            THEN (SELECT ARRAY[w.wal_bytes::int8, NULL, NULL]
                    FROM pg_catalog.pg_stat_get_backend_wal(a.pid) AS w) END
