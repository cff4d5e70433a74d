"""The PostgreSQL side, the only package that speaks SQL: the connection, the poll, the guarded signal statement, and
the `.sql` files they run (queries/)."""
