-- The seed's table, its three rows and simulate_long_query(), as the seed writes them, with one change: the sleep is
-- a parameter whose default the demo sets ({seconds}; the seed sleeps 30 s), so `SELECT simulate_long_query();` is
-- still the seed's call. NOW() is the transaction's start, so a row says when its long query began, as in the seed.
CREATE TABLE sample_data ( id SERIAL PRIMARY KEY, description TEXT, created_at TIMESTAMPTZ DEFAULT NOW() );

INSERT INTO sample_data (description)
VALUES ('Demo entry 1'), ('Demo entry 2'), ('Demo entry 3');

CREATE OR REPLACE FUNCTION simulate_long_query(seconds double precision DEFAULT {seconds})
RETURNS VOID AS $$
BEGIN
    PERFORM pg_sleep(seconds);
    INSERT INTO sample_data (description) VALUES ('Long query complete at ' || NOW());
END;
$$ LANGUAGE plpgsql;
