"""What runs: one loop per target (monitor), its leadership, the enforcer that signals, and the daemon over them."""
