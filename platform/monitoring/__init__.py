"""SLA evaluation, drift monitoring and alerts."""
