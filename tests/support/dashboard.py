"""Helpers for the dashboard tests: seeding a small world straight through the ORM, and signing in a test client."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from flywheel.core.db import Database, utcnow
from flywheel.domain import partitions
from flywheel.domain.holdout import holdout_bucket
from flywheel.models.records import Feedback, Prediction, Task, Tenant
from flywheel.models.training import ModelVersion

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def sign_in(client: FlaskClient, key: str) -> None:
    page = client.get("/dashboard/login")
    r = client.post("/dashboard/login", data={"api_key": key, "csrf_token": csrf_from(page.get_data(as_text=True))})
    assert r.status_code == 302, r.get_data(as_text=True)


def page_token(client: FlaskClient, path: str = "/dashboard/") -> str:
    return csrf_from(client.get(path).get_data(as_text=True))


@dataclass
class Seeded:
    predictions: dict[str, list[int]] = field(default_factory=dict)  # tenant slug -> prediction ids
    models: dict[str, int] = field(default_factory=dict)  # version -> id


def add_predictions(
    db: Database,
    tenant_slug: str,
    *,
    n: int,
    labels: list[str],
    correct_every: int = 2,
    labeled_every: int = 1,
    start: datetime | None = None,
    step: timedelta = timedelta(hours=1),
    prefix: str = "p",
) -> list[int]:
    """``n`` predictions an hour apart; every ``labeled_every``-th gets an effective label, right every
    ``correct_every``-th time. Confidence rises with the index so calibration bins fill."""
    start = start or (utcnow() - step * n)
    ids = []
    with db.session() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == tenant_slug))
        task = session.scalar(select(Task).where(Task.name == "intent"))
        assert tenant is not None and task is not None
        for i in range(n):
            client_id = f"{prefix}-{tenant_slug}-{i}"
            label = labels[i % len(labels)]
            labeled = i % labeled_every == 0
            effective = None
            if labeled:
                effective = label if i % correct_every == 0 else labels[(i + 1) % len(labels)]
            row = Prediction(
                tenant_id=tenant.id,
                task_id=task.id,
                client_id=client_id,
                text=f"{tenant_slug} text number {i}: where is my card?",
                label=label,
                confidence=0.3 + 0.69 * (i / max(n - 1, 1)),
                probabilities=None,
                model_version="m1",
                metadata_=None,
                created_at=start + step * i,
                content_hash=hashlib.sha256(client_id.encode()).hexdigest(),
                bucket=holdout_bucket(client_id),
                effective_label=effective,
                label_discarded=False,
                feedback_count=1 if labeled else 0,
            )
            session.add(row)
            session.flush()
            if labeled:
                session.add(
                    Feedback(
                        tenant_id=tenant.id,
                        prediction_id=row.id,
                        prediction_created_at=row.created_at,  # the partition key: its prediction's month
                        client_id=f"fb-{client_id}",
                        label=effective,
                        source="end_user",
                        source_id="user-1",
                        created_at=row.created_at,
                        content_hash=hashlib.sha256(f"fb-{client_id}".encode()).hexdigest(),
                    )
                )
            ids.append(row.id)
        session.flush()
        partitions.register_keys(session)  # written around ingest: their idempotency keys too (PostgreSQL)
    return ids


def add_model(db: Database, version: str, *, tenant_slug: str | None, status: str = "candidate") -> int:
    """A model version; ``status="champion"`` also promotes it through the registry."""
    from flywheel.retrain.registry import promote

    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == "intent"))
        assert task is not None
        tenant = session.scalar(select(Tenant).where(Tenant.slug == tenant_slug)) if tenant_slug else None
        model = ModelVersion(
            task_id=task.id,
            tenant_id=tenant.id if tenant else None,
            version=version,
            rung="few_shot",
            status="candidate",
            metrics={"accuracy": 0.9, "macro_f1": 0.88},
        )
        session.add(model)
        session.flush()
        if status == "champion":
            promote(session, model.id)
        return model.id


def put_sla(db: Database, tenant_slug: str, **terms: Any) -> int:
    """An SLA through the monitoring area's service."""
    from flywheel.monitoring.sla import SlaTerms
    from flywheel.monitoring.sla import put_sla as put

    with db.session() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == tenant_slug))
        task = session.scalar(select(Task).where(Task.name == "intent"))
        assert tenant is not None and task is not None
        sla, _ = put(session, tenant, task, SlaTerms(**terms))
        return sla.id


def add_evaluation(
    db: Database,
    sla_id: int,
    *,
    status: str,
    value: float | None,
    at: datetime | None = None,
    ci: float = 0.03,
    drift_status: str = "none",
    n_labeled: int = 300,
) -> int:
    """A stored evaluation with chosen numbers (for tests of how pages show and sort them)."""
    from flywheel.models.slas import Sla, SlaEvaluation

    at = at or utcnow()
    with db.session() as session:
        sla = session.get(Sla, sla_id)
        assert sla is not None
        row = SlaEvaluation(
            sla_id=sla.id,
            tenant_id=sla.tenant_id,
            task_id=sla.task_id,
            sla_version=sla.version,
            metric=sla.metric,
            threshold=sla.threshold,
            window_days=sla.window_days,
            window_start=at - timedelta(days=sla.window_days),
            window_end=at,
            value=value,
            ci_low=None if value is None else value - ci,
            ci_high=None if value is None else value + ci,
            n_labeled=n_labeled,
            n_predictions=n_labeled * 2,
            coverage=0.5,
            estimated_value=None if value is None else value + 0.01,
            estimated_accuracy=None,
            calibration_error=0.05,
            status=status,
            drift_status=drift_status,
            drift_report_id=None,
            evaluated_at=at,
        )
        session.add(row)
        session.flush()
        return row.id


def seed_monitoring(db: Database, settings: Any, *, days: int = 4, drift: bool = True) -> None:
    """SLAs for acme (threshold at its accuracy: at risk) and globex (met), evaluated by the real monitoring job
    every 12 hours over the last ``days`` days, the last run with Evidently drift."""
    from flywheel.monitoring.jobs import run_monitoring

    put_sla(db, "acme", metric="accuracy", threshold=0.55, window_days=2, min_labeled=20, warning_margin=0.02)
    put_sla(db, "globex", metric="accuracy", threshold=0.8, window_days=2, min_labeled=20, warning_margin=0.02)
    now = utcnow()
    for k in range(days * 2, 0, -1):
        run_monitoring(db, settings, now=now - timedelta(hours=12 * k), drift=False, deliver=False)
    run_monitoring(db, settings, now=now, drift=drift, deliver=False)


def add_training_run(
    db: Database,
    *,
    model_id: int | None,
    status: str,
    decision: str | None,
    reasons: list[str],
    gate: dict[str, Any] | None = None,
) -> int:
    from flywheel.models.training import TrainingRun

    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == "intent"))
        assert task is not None
        run = TrainingRun(
            task_id=task.id,
            tenant_id=None,
            status=status,
            trigger="nightly",
            rung="few_shot",
            progress=1.0 if status != "running" else 0.4,
            message="done" if status != "running" else "epoch 2 of 3",
            metrics={"accuracy": 0.91, "baseline_accuracy": 0.88, **({"gate": gate} if gate else {})},
            decision=decision,
            reasons=reasons,
            model_id=model_id,
        )
        session.add(run)
        session.flush()
        return run.id


# The dashboard's browser tests: Playwright drives Debian's chromium (Playwright's own download cannot work here).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BROWSER_TEST = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: install Debian's chromium (make browsers)"
    ),
]
