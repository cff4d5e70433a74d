"""What the operating system says about the monitored server: /proc and the cgroup filesystem, read only for the
server's own processes, proven to be them (exporter/host/procfs.py)."""
