"""Settings: one frozen object, and ``Settings.from_env()`` is the only reader of ``os.environ``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path("var")


@dataclass(frozen=True)
class Settings:
    """Everything Flywheel can be configured with; each field reads ``FLYWHEEL_<NAME>`` in ``from_env``."""

    database_url: str = f"sqlite:///{DEFAULT_DATA_DIR / 'flywheel.db'}"
    # A local folder (or shared mount), or an fsspec URL (s3://bucket/prefix, gs://…, file:///…).
    artifacts_dir: str | Path = DEFAULT_DATA_DIR / "artifacts"
    secret_key: str = ""  # signs dashboard sessions; empty: a secret stored in the database, shared by all
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    threads: int = 4  # gthread worker threads: keep-alive connections and concurrent requests per worker
    log_level: str = "INFO"
    # API keys a process has seen are trusted this long without a lookup; 0 looks every request's key up.
    key_cache_seconds: float = 1.0
    # Ingestion limits (API.md).
    max_batch_items: int = 1000
    max_body_bytes: int = 5 * 1024 * 1024
    max_predict_inputs: int = 256
    # Label quality.
    cv_folds: int = 5
    source_exclude_issue_rate: float = 0.5
    crowdlab_min_overlap: int = 20
    source_min_labels: int = 20  # a source is judged (and maybe excluded) only after this many labels
    label_quality_enabled: bool = True  # the nightly label-quality pass; off, every effective label trains
    label_quality_min_labeled: int = 10  # fewer labeled predictions: the pass records nothing to score
    review_unlabeled_cap: int = 5000  # newest unlabeled predictions scored for the `uncertain` queue
    # Retraining and the model ladder.
    holdout_percent: int = 15
    few_shot_min_per_class: int = 2
    fine_tune_min_labels: int = 500
    retrain_cron: str = "0 2 * * *"
    monitor_cron: str = "0 * * * *"
    early_retrain_new_labels: int = 1000
    base_model: str = ""  # a local save_pretrained directory; empty means the packaged all-MiniLM-L6-v2
    gate_metric: str = "accuracy"
    gate_tolerance: float = 0.02  # the paired interval's lower bound must be above -gate_tolerance
    gate_tenant_tolerance: float = 0.02
    gate_min_tenant_holdout: int = 20
    # The gate weighs each holdout label the label-quality pass flagged (and no reviewer decided yet) by the
    # probability that it is right; off, every holdout label counts in full (docs/label-quality.md#holdout-hygiene).
    gate_holdout_hygiene: bool = True
    early_retrain_debounce_minutes: int = 360
    early_retrain_check_seconds: int = 300
    training_poll_seconds: float = 2.0
    run_stale_seconds: int = 300
    scheduler_lock_ttl_seconds: int = 60
    fine_tune_epochs: int = 8
    serve_optimized: bool = True  # INT8/bf16 serving, only where verified to agree with fp32 on the holdout
    # Inferences at once across a server's workers (0: one fewer than the CPU cores, at least one), so that model
    # calls never take every core from the cheap requests beside them.
    serve_inference_slots: int = 0
    # Scale-out. With a broker URL (Redis: redis://host:6379/0), `flywheel scheduler` only dispatches and
    # `flywheel worker` processes run the jobs; without one, the scheduler runs them in-process.
    broker_url: str = ""
    # The broker redelivers an unacknowledged message after this long: longer than the longest job (a fine-tune
    # can take hours), or a long run would be delivered to a second worker while the first still trains it.
    broker_visibility_timeout_seconds: int = 12 * 3600
    dispatch_resend_seconds: int = 300  # a queued run nobody claimed this long after its message gets another
    run_max_attempts: int = 3  # a run abandoned by a dead worker is queued again until this many claims
    worker_heartbeat_seconds: int = 30
    fine_tune_on_cpu: bool = False  # with a broker: may CPU workers fine-tune when no GPU worker is alive?
    # Housekeeping (daily): on PostgreSQL, monthly partitions of the predictions are created this many months
    # ahead. retention_days > 0: the nightly data-rights job expires older predictions of every tenant without its
    # own retention_days (whole months where it can).
    housekeeping_cron: str = "30 1 * * *"
    partition_months_ahead: int = 3
    retention_days: int = 0  # 0 keeps everything
    # Monitoring.
    drift_sample_cap: int = 50_000
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 5
    webhook_backoff_s: float = 1.0  # retry n waits webhook_backoff_s * 2**(n-1)
    drift_text_embeddings: bool = True  # text drift on base-model embeddings (caps the drift sample at the next)
    drift_embedding_cap: int = 5_000
    drift_min_rows: int = 30
    # Data rights: the nightly retention job, tenant deletion batches, and how long a tainted champion (one that
    # trained on records erased since) may serve before an alert says retraining has not replaced it.
    rights_cron: str = "30 1 * * *"
    tenant_deletion_poll_seconds: float = 10.0
    erasure_batch_size: int = 1000
    tainted_max_days: int = 30
    # Dashboard: signed session cookie lifetime (absolute, from sign-in) and the cookie's Secure flag.
    dashboard_session_minutes: int = 480
    dashboard_secure_cookie: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"FLYWHEEL_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _coerce(f.type, raw)
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _coerce(type_name: Any, raw: str) -> Any:
    name = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    if name == "int":
        return int(raw)
    if name == "float":
        return float(raw)
    if name == "Path":
        return Path(raw)
    if name == "bool":
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    return raw
