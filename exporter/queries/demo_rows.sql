-- The rows the demo's sessions wrote when they completed.
SELECT parent, pid, finished_at FROM sample_data ORDER BY id;
