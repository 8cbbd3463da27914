"""keycast_tw.web: the HTTP edge (``health.HealthApp``: /health /ready /status /metrics)."""
