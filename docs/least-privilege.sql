-- A least-privilege role for pgparent: it reads every session (pg_monitor includes pg_read_all_stats) and may signal
-- other roles' sessions (pg_signal_backend). It is not a superuser, so it can never signal a superuser's session.
-- Run as an administrator; change the password, or use a certificate or your cloud's identity instead.
CREATE ROLE pgparent LOGIN PASSWORD 'change-me' CONNECTION LIMIT 5;
GRANT pg_monitor TO pgparent;
GRANT pg_signal_backend TO pgparent;
-- pgparent needs no table privileges: it reads only pg_stat_activity and calls pg_terminate_backend/pg_cancel_backend.
