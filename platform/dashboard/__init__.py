"""The customer-success dashboard: server-rendered pages under ``/dashboard/`` (sign-in with an API key)."""
