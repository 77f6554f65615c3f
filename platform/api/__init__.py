"""HTTP API blueprints (v1)."""
