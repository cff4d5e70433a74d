-- What this server and role allow: version, optional pg_stat_activity columns, visibility of other roles' sessions,
-- the right to signal them, and whether the server is a standby. server_pid is the pid of the session that runs this
-- statement: the client compares it with the pid its connection announced, which a connection pooler makes up.
-- track_activity_query_size (in bytes) says where PostgreSQL cuts query texts. system_identifier (NULL where the role
-- may not read pg_control_system()) and the postmaster's start time tell one running server from another (a standby
-- shares its primary's identifier, not its start time); database is the DSN's database.
-- server_pid_started (that session's backend_start) and server_started are how pgparent finds the server's
-- processes in /proc (exporter/host/procfs.py). backend_stats says whether pg_stat_get_backend_wal and _io exist
-- (PostgreSQL 18) and may be executed: NULL where they do not exist, false where the role may not.
-- max_connections and the slots reserved for superusers (superuser_reserved_connections, and reserved_connections on
-- PostgreSQL 16+: 0 before) take a restart to change, so a connection reads them once. server_version is how the
-- server names itself (`pgparent top`'s header). superuser: pgparent's own role is one (protect.superusers: auto).
-- tls_version: the TLS protocol of the session that runs this statement, as the server sees it (NULL: no TLS).
SELECT current_setting('server_version_num')::int AS server_version_num,
       current_user AS role,
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                WHERE attrelid = 'pg_catalog.pg_stat_activity'::regclass AND attname = 'leader_pid') AS has_leader_pid,
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                WHERE attrelid = 'pg_catalog.pg_stat_activity'::regclass AND attname = 'query_id') AS has_query_id,
       pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE') AS can_read_all_stats,
       pg_catalog.pg_has_role('pg_signal_backend', 'USAGE') AS can_signal,
       pg_catalog.pg_is_in_recovery() AS in_recovery,
       pg_catalog.pg_backend_pid() AS server_pid,
       (SELECT setting::int FROM pg_catalog.pg_settings
         WHERE name = 'track_activity_query_size') AS track_activity_query_size,
       CASE WHEN pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
            THEN (SELECT system_identifier FROM pg_catalog.pg_control_system()) END AS system_identifier,
       pg_catalog.pg_postmaster_start_time() AS server_started,
       pg_catalog.current_database() AS database,
       (SELECT s.backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS s)
         AS server_pid_started,
       (SELECT bool_and(pg_catalog.has_function_privilege(f, 'EXECUTE'))
          FROM unnest(ARRAY[pg_catalog.to_regprocedure('pg_catalog.pg_stat_get_backend_wal(integer)'),
                            pg_catalog.to_regprocedure('pg_catalog.pg_stat_get_backend_io(integer)')]) AS f
         WHERE f IS NOT NULL
        HAVING count(*) = 2) AS backend_stats,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved_connections,
       current_setting('server_version') AS server_version,
       coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user), false) AS superuser,
       (SELECT s.version FROM pg_catalog.pg_stat_ssl AS s WHERE s.pid = pg_catalog.pg_backend_pid() AND s.ssl)
         AS tls_version
