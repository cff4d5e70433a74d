-- The client backends that count against max_connections, server-wide, whatever the target reads: every client
-- backend, pgparent's own included, and the rows a role without pg_read_all_stats sees without a backend_type (those
-- with a user and a database, as activity.sql keeps them). Autovacuum, background workers (parallel workers among
-- them) and walsenders take slots of their own. An expression: activity.sql reads it beside its rows for a target
-- with `sessions: database` (a whole-server poll counts its own rows instead: this costs a second pass over every
-- backend, about 1 ms at 1000), and a poll that read no row reads it with now(). pg_stat_get_activity reads the
-- statement's one snapshot of the backends.
(SELECT count(*)::int
   FROM pg_catalog.pg_stat_get_activity(NULL) AS c
  WHERE c.backend_type = 'client backend'
     OR (c.backend_type IS NULL AND c.usesysid IS NOT NULL AND c.datid IS NOT NULL))
