-- What `pgparent doctor` asks of a server beyond its capabilities (capabilities.sql): which of the names the managed
-- services reserve exist here as roles (%(roles)s) and databases (%(databases)s), which settings of those services'
-- own prefixes exist (Azure's azure.*, RDS's rds.*, Cloud SQL's cloudsql.*, AlloyDB's alloydb.*: each service
-- defines its own), and how many client sessions of other roles the monitoring role sees only in part (no
-- pg_read_all_stats: no backend_type, state or backend_start; activity.sql counts them as hidden).
SELECT ARRAY(SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname = ANY (%(roles)s) ORDER BY 1) AS roles,
       ARRAY(SELECT datname::text FROM pg_catalog.pg_database WHERE datname = ANY (%(databases)s) ORDER BY 1)
         AS databases,
       ARRAY(SELECT name FROM pg_catalog.pg_settings WHERE name ~ '^(azure|rds|cloudsql|alloydb)\.' ORDER BY 1)
         AS settings,
       (SELECT count(*) FROM pg_catalog.pg_stat_activity AS a
         WHERE a.backend_type IS NULL AND a.usename IS NOT NULL AND a.datname IS NOT NULL
           AND a.pid <> pg_catalog.pg_backend_pid())::int AS hidden
