-- The seed scenario's schema: a table, and a function that runs long and then records that it finished.
CREATE TABLE IF NOT EXISTS sample_data (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent      text        NOT NULL,
    pid         int         NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE OR REPLACE FUNCTION simulate_long_query(seconds double precision DEFAULT 8)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(seconds);
    INSERT INTO sample_data (parent, pid) VALUES (current_setting('application_name'), pg_backend_pid());
END
$$;
