-- What each of the demo's tagged sessions runs.
SELECT simulate_long_query();
