#!/bin/sh
# pgparent's least-privilege role (docs/least-privilege.sql), created when the official image initialises an empty
# data directory: it runs /docker-entrypoint-initdb.d/*.sh then, and never again. On an existing data directory, run
# docs/least-privilege.sql by hand instead. The password comes from the Secret, as $PGPARENT_PASSWORD.
set -eu
psql --username "$POSTGRES_USER" --dbname postgres --set ON_ERROR_STOP=1 --set password="$PGPARENT_PASSWORD" <<'SQL'
CREATE ROLE pgparent LOGIN PASSWORD :'password' CONNECTION LIMIT 5;
GRANT pg_monitor TO pgparent;
GRANT pg_signal_backend TO pgparent;
SQL
