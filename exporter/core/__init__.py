"""Pure: records, tag sources, locks, grouping, conditions, policy, deadlines and the pipeline that runs them. No I/O,
no clock reads, no psycopg: the server's clock comes in with the snapshot (checked by import-linter)."""
