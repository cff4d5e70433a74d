-- The seed's closing look at the table: the demo's three rows, and one row per long query that completed.
SELECT * FROM sample_data;
