-- What each of the demo's sessions runs: the seed's statement, sent whole as `psql -c` sends it ({application_name}
-- is the session's parent tag, e.g. 'FakeParent:1001').
SET application_name = {application_name}; SELECT simulate_long_query();
