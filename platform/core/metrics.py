"""Prometheus metrics (prometheus-client). Multi-process gunicorn aggregates through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

REQUESTS = Counter("flywheel_http_requests_total", "HTTP requests", ["method", "endpoint", "status"])
LATENCY = Histogram(
    "flywheel_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ROWS_INGESTED = Counter("flywheel_rows_ingested_total", "Rows stored by ingestion", ["kind"])
# Bound once: ``labels()`` finds the child under a lock on every call, on the ingestion path.
PREDICTIONS_INGESTED = ROWS_INGESTED.labels(kind="prediction")
FEEDBACK_INGESTED = ROWS_INGESTED.labels(kind="feedback")
JOB_RUNS = Counter("flywheel_job_runs_total", "Background job runs", ["job", "outcome"])


def render() -> tuple[bytes, str]:
    """The exposition text; in multi-process mode, merged across gunicorn workers."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
