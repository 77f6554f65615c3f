"""The monitoring job: evaluate every SLA (or some), check drift, record transitions, deliver alerts.

Safe to run twice: each run appends an evaluation (the history is a time series), and alerts are raised only on a
change against the state stored on the SLA row, read under a row lock in the same transaction that updates it, so
two runs (even concurrent ones) raise one alert per transition. Jobs take names, open their own sessions and keep
each transaction short: reading drift inputs, running Evidently and POSTing webhooks happen outside the write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, text

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.models.records import Task, Tenant
from flywheel.models.slas import DriftReport, Sla
from flywheel.monitoring import alerts as alerts_mod
from flywheel.monitoring import sla as sla_mod

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class MonitoringResult:
    evaluated: int = 0
    alerts: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    drift: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "evaluated": self.evaluated,
            "alerts": self.alerts,
            "statuses": self.statuses,
            "drift": self.drift,
            "deliveries": self.deliveries,
            "errors": self.errors,
        }


def select_slas(db: Database, *, tenant: str | None = None, task: str | None = None) -> list[int]:
    """Ids of the SLAs to evaluate; unknown tenant or task names raise ``ValueError``."""
    with db.session() as session:
        stmt = select(Sla.id).order_by(Sla.id)
        if tenant is not None:
            tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == tenant))
            if tenant_id is None:
                raise ValueError(f"tenant '{tenant}' does not exist")
            stmt = stmt.where(Sla.tenant_id == tenant_id)
        if task is not None:
            task_id = session.scalar(select(Task.id).where(Task.name == task))
            if task_id is None:
                raise ValueError(f"task '{task}' does not exist")
            stmt = stmt.where(Sla.task_id == task_id)
        return list(session.scalars(stmt))


def check_drift(db: Database, settings: Settings, sla_id: int, *, now: datetime) -> int | None:
    """Run drift for one SLA's tenant and task and store the report; returns its id (None if the SLA is gone)."""
    from flywheel.monitoring.drift import compress_snapshot, run_drift
    from flywheel.monitoring.frames import load_drift_inputs

    with db.session() as session:
        sla = session.get(Sla, sla_id)
        if sla is None:
            return None
        inputs = load_drift_inputs(session, sla, settings, now=now)
        tenant_id, task_id = sla.tenant_id, sla.task_id
    result = run_drift(
        inputs.reference,
        inputs.current,
        min_rows=settings.drift_min_rows,
        model_outputs=inputs.reference_kind == "window",
    )
    with db.session() as session:
        if not db.is_sqlite:
            # A derived, recomputable row: no need to wait for its WAL flush. The evaluation that refers to it commits
            # right after with the default (durable) setting, and that flush covers this transaction too.
            session.execute(text("SET LOCAL synchronous_commit = off"))
        report = DriftReport(
            tenant_id=tenant_id,
            task_id=task_id,
            status=result.status,
            share=result.share,
            reference_kind=inputs.reference_kind,
            window_start=inputs.window_start,
            window_end=inputs.window_end,
            n_reference=result.n_reference,
            n_current=result.n_current,
            summary={**result.summary(), "reference_kind": inputs.reference_kind},
            snapshot=compress_snapshot(result.snapshot) if result.snapshot else None,
            created_at=now,
        )
        session.add(report)
        session.flush()
        return report.id


def evaluate_sla(
    db: Database, settings: Settings, sla_id: int, *, now: datetime, drift: bool = True, n_boot: int = 1000
) -> tuple[str, str, list[int]] | None:
    """Evaluate one SLA (with drift unless ``drift=False``) and record transitions. Returns
    (status, drift status, alert ids), or None when the SLA no longer exists."""
    report_id = None
    if drift:
        try:
            report_id = check_drift(db, settings, sla_id, now=now)
        except Exception:  # drift is a second opinion: its failure must not stop the SLA verdict
            log.exception("drift check of SLA %s failed; drift status stays unknown", sla_id)
    with db.session() as session:
        sla = session.scalar(select(Sla).where(Sla.id == sla_id).with_for_update(of=Sla))
        if sla is None:
            return None
        drift_status = "unknown"
        if report_id is not None:
            report = session.get(DriftReport, report_id)
            drift_status = report.status if report is not None else "unknown"
        evaluation = sla_mod.evaluate(
            session, sla, now=now, drift_status=drift_status, drift_report_id=report_id, n_boot=n_boot
        )
        raised = alerts_mod.record_transitions(session, sla, evaluation)
        return evaluation.status, drift_status, [a.id for a in raised]


def run_monitoring(
    db: Database,
    settings: Settings,
    tenant: str | None = None,
    task: str | None = None,
    progress: Progress | None = None,
    *,
    now: datetime | None = None,
    drift: bool = True,
    deliver: bool = True,
) -> dict[str, Any]:
    """The hourly job: evaluate the selected SLAs, then deliver the alerts they raised."""
    now = now or utcnow()
    ids = select_slas(db, tenant=tenant, task=task)
    result = MonitoringResult()
    for done, sla_id in enumerate(ids, start=1):
        try:
            outcome = evaluate_sla(db, settings, sla_id, now=now, drift=drift)
        except Exception as exc:  # one tenant's failure must not stop the others' monitoring
            log.exception("monitoring SLA %s failed", sla_id)
            result.errors.append(f"sla {sla_id}: {type(exc).__name__}: {exc}"[:300])
            outcome = None
        if outcome is not None:
            status, drift_status, alert_ids = outcome
            result.evaluated += 1
            result.alerts += len(alert_ids)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.drift[drift_status] = result.drift.get(drift_status, 0) + 1
        if progress is not None:
            progress(done, len(ids), f"sla {sla_id}")
    if deliver:
        result.deliveries = alerts_mod.deliver_pending(db, settings)
    log.info("monitoring done", extra=result.as_dict())
    return result.as_dict()
