"""Checks of the deliverables beside the code: the Grafana dashboard, the Prometheus alerts, the runbook."""
