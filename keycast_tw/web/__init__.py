"""keycast_tw.web: the daemon's HTTP edge (``health.HealthApp``: /health /ready /status /metrics)."""
