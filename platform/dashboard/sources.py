"""What the dashboard reads from the other areas: SLA evaluations, drift reports and alerts (monitoring), the review
queue and reviewer decisions (label quality), models and training runs (retraining).

One module, so a change in another area's tables or services touches one file here. Actions (review decisions,
promote, rollback) call the owning area's service functions; nothing is re-implemented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from flywheel.core.config import Settings
from flywheel.dashboard.charts import MetricPoint
from flywheel.domain.auth import Principal
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.slas import Alert, DriftReport, Sla, SlaEvaluation
from flywheel.models.training import ModelVersion, TrainingRun

STATUS_RANK = {"breached": 0, "at_risk": 1, "insufficient_data": 2, "met": 3, "no_sla": 4}
STATUS_WORDS = {
    "breached": "Breached",
    "at_risk": "At risk",
    "insufficient_data": "Insufficient data",
    "met": "Met",
    "no_sla": "No SLA",
}


@dataclass
class SlaRow:
    """One tenant × task line of the overview, from the SLA's latest evaluation (or ``no_sla``)."""

    tenant: str
    tenant_name: str
    task: str
    status: str = "no_sla"
    metric: str | None = None
    threshold: float | None = None
    window_days: int | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    value_clean: float | None = None
    ci_low_clean: float | None = None
    ci_high_clean: float | None = None
    agreement: str = "raw"  # which value the status reads: "raw" (value) or "clean" (value_clean)
    n_labeled: int | None = None
    coverage: float | None = None
    estimated_value: float | None = None
    calibration_error: float | None = None
    drift_status: str = "unknown"
    drift_report_id: int | None = None
    evaluated_at: datetime | None = None
    last_alert_at: datetime | None = None
    last_alert: str | None = None
    sla_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def counted(self) -> tuple[float | None, float | None, float | None]:
        """``(value, ci_low, ci_high)`` of the value the status reads (the SLA's ``agreement``)."""
        if self.agreement == "clean":
            return self.value_clean, self.ci_low_clean, self.ci_high_clean
        return self.value, self.ci_low, self.ci_high

    @property
    def margin(self) -> float | None:
        value = self.counted[0]
        if value is None or self.threshold is None:
            return None
        return value - self.threshold

    @property
    def sort_key(self) -> tuple[int, float, str, str]:
        margin = self.margin
        return (STATUS_RANK.get(self.status, 5), margin if margin is not None else float("inf"), self.tenant, self.task)


# --- monitoring --------------------------------------------------------------------------------------------------


def sla_rows(session: Session, *, tenant_id: int | None) -> list[SlaRow]:
    """Every SLA visible to the caller with its latest evaluation and its tenant/task's latest alert (3 queries)."""
    from flywheel.monitoring.sla import latest_evaluations

    stmt = select(Sla)
    if tenant_id is not None:
        stmt = stmt.where(Sla.tenant_id == tenant_id)
    slas = list(session.scalars(stmt))
    if not slas:
        return []
    evaluations = latest_evaluations(session, [s.id for s in slas])
    newest_alert = select(func.max(Alert.id)).group_by(Alert.tenant_id, Alert.task_id)
    if tenant_id is not None:
        newest_alert = newest_alert.where(Alert.tenant_id == tenant_id)
    last_alerts = {
        (a.tenant_id, a.task_id): a for a in session.scalars(select(Alert).where(Alert.id.in_(newest_alert)))
    }
    rows = []
    for sla in slas:
        ev = evaluations.get(sla.id)
        alert = last_alerts.get((sla.tenant_id, sla.task_id))
        rows.append(
            SlaRow(
                tenant=sla.tenant.slug,
                tenant_name=sla.tenant.name,
                task=sla.task.name,
                status=ev.status if ev else "insufficient_data",
                metric=sla.metric,
                threshold=sla.threshold,
                window_days=sla.window_days,
                value=ev.value if ev else None,
                ci_low=ev.ci_low if ev else None,
                ci_high=ev.ci_high if ev else None,
                value_clean=ev.value_clean if ev else None,
                ci_low_clean=ev.ci_low_clean if ev else None,
                ci_high_clean=ev.ci_high_clean if ev else None,
                agreement=sla.agreement,
                n_labeled=ev.n_labeled if ev else None,
                coverage=ev.coverage if ev else None,
                estimated_value=ev.estimated_value if ev else None,
                calibration_error=ev.calibration_error if ev else None,
                drift_status=ev.drift_status if ev else "unknown",
                drift_report_id=ev.drift_report_id if ev else None,
                evaluated_at=ev.evaluated_at if ev else None,
                last_alert_at=alert.created_at if alert else None,
                last_alert=alert.message if alert else None,
                sla_id=sla.id,
            )
        )
    return rows


def _point_columns() -> list[Any]:
    """An evaluation's columns named as ``MetricPoint``'s fields."""
    e = SlaEvaluation
    return [
        e.evaluated_at.label("at"),
        e.value,
        e.ci_low,
        e.ci_high,
        e.estimated_value,
        e.coverage,
        e.n_labeled,
        e.calibration_error,
        e.status,
        e.threshold,
    ]


def sla_history(
    session: Session, *, tenant_id: int, task_id: int, since: datetime, until: datetime | None = None
) -> list[MetricPoint]:
    """The SLA's evaluations in ``[since, until)``, oldest first."""
    stmt = (
        select(*_point_columns())
        .where(
            SlaEvaluation.tenant_id == tenant_id,
            SlaEvaluation.task_id == task_id,
            SlaEvaluation.evaluated_at >= since,
        )
        .order_by(SlaEvaluation.evaluated_at, SlaEvaluation.id)
    )
    if until is not None:
        stmt = stmt.where(SlaEvaluation.evaluated_at < until)
    return [MetricPoint(**row._asdict()) for row in session.execute(stmt)]


@dataclass(frozen=True)
class EvaluationSummary:
    task: str
    evaluations: int
    met: int
    worst: float | None

    @property
    def met_share(self) -> float | None:
        return self.met / self.evaluations if self.evaluations else None


def evaluation_summary(
    session: Session, *, tenant_id: int, since: datetime, until: datetime
) -> dict[str, EvaluationSummary]:
    """Per task: how many evaluations in the period, how many found the SLA met, the worst measured value."""
    stmt = (
        select(
            Task.name,
            func.count(),
            func.sum(case((SlaEvaluation.status == "met", 1), else_=0)),
            func.min(SlaEvaluation.value),
        )
        .join(Task, Task.id == SlaEvaluation.task_id)
        .where(
            SlaEvaluation.tenant_id == tenant_id,
            SlaEvaluation.evaluated_at >= since,
            SlaEvaluation.evaluated_at < until,
        )
        .group_by(Task.name)
    )
    return {
        name: EvaluationSummary(name, int(n), int(met or 0), worst)
        for name, n, met, worst in session.execute(stmt).tuples()
    }


def daily_evaluations(
    session: Session, *, tenant_id: int, since: datetime, until: datetime
) -> dict[tuple[str, date], MetricPoint]:
    """The last evaluation of each task on each UTC day of ``[since, until)``."""
    from flywheel.dashboard.queries import day_of

    day = day_of(session, SlaEvaluation.evaluated_at)
    last = (
        select(func.max(SlaEvaluation.id))
        .where(
            SlaEvaluation.tenant_id == tenant_id,
            SlaEvaluation.evaluated_at >= since,
            SlaEvaluation.evaluated_at < until,
        )
        .group_by(SlaEvaluation.task_id, day)
    )
    stmt = (
        select(Task.name.label("task_name"), *_point_columns())
        .join(Task, Task.id == SlaEvaluation.task_id)
        .where(SlaEvaluation.id.in_(last))
    )
    out = {}
    for row in session.execute(stmt):
        fields = row._asdict()
        name = fields.pop("task_name")
        point = MetricPoint(**fields)
        out[(name, point.at.astimezone(UTC).date())] = point
    return out


@dataclass(frozen=True)
class DriftReportRef:
    id: int
    created_at: datetime
    status: str
    share: float | None


def latest_drift_report(session: Session, *, tenant_id: int, task_id: int) -> DriftReportRef | None:
    row = session.execute(
        select(DriftReport.id, DriftReport.created_at, DriftReport.status, DriftReport.share)
        .where(DriftReport.tenant_id == tenant_id, DriftReport.task_id == task_id)
        .order_by(DriftReport.created_at.desc(), DriftReport.id.desc())
        .limit(1)
    ).first()
    return DriftReportRef(*row) if row else None


def drift_report_html(session: Session, *, report_id: int, tenant_id: int | None) -> str | None:
    """The report's Evidently HTML, or None when it does not exist or belongs to a tenant the caller cannot see."""
    row = session.execute(
        select(DriftReport.tenant_id, DriftReport.snapshot, DriftReport.status, DriftReport.summary).where(
            DriftReport.id == report_id
        )
    ).first()
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        return None
    if row.snapshot is None:
        n = (row.summary or {}).get("n_current")
        return (
            "<!doctype html><meta charset=utf-8><body style='font-family:sans-serif'>"
            f"<p>Drift was not computed for this window (status: {row.status}; {n} current rows): "
            "too few predictions to compare.</p>"
        )
    from flywheel.monitoring.drift import render_html

    return render_html(row.snapshot)


@dataclass(frozen=True)
class AlertRow:
    at: datetime
    task: str
    kind: str
    from_status: str | None
    to_status: str
    message: str
    delivery_status: str


def alerts(
    session: Session,
    *,
    tenant_id: int,
    task_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 20,
) -> list[AlertRow]:
    stmt = (
        select(Alert, Task.name)
        .join(Task, Task.id == Alert.task_id)
        .where(Alert.tenant_id == tenant_id)
        .order_by(Alert.created_at.desc(), Alert.id.desc())
        .limit(limit)
    )
    if task_id is not None:
        stmt = stmt.where(Alert.task_id == task_id)
    if since is not None:
        stmt = stmt.where(Alert.created_at >= since)
    if until is not None:
        stmt = stmt.where(Alert.created_at < until)
    return [
        AlertRow(a.created_at, name, a.kind, a.from_status, a.to_status, a.message, a.delivery_status)
        for a, name in session.execute(stmt).tuples()
    ]


# --- label quality -----------------------------------------------------------------------------------------------


def review_queue(session: Session, *, tenant: Tenant, task: Task, kind: str, limit: int) -> list[Any]:
    """The label-quality area's review queue (``flywheel.feedback.review.ReviewEntry`` items), most worth a
    person's time first."""
    from flywheel.feedback.review import review_queue as queue

    return queue(session, tenant_id=tenant.id, task_id=task.id, kind=kind, limit=limit)


def record_review(
    session: Session,
    *,
    prediction: Prediction,
    decision: str,
    label: str | None,
    note: str | None,
    reviewer: str,
) -> None:
    """A reviewer's keep / relabel / discard through the label-quality service: feedback with ``source: reviewer``."""
    from flywheel.feedback.review import record_decision

    record_decision(session, prediction, decision=decision, label=label, note=note, reviewer=reviewer)


# --- retraining --------------------------------------------------------------------------------------------------


def serving_model(session: Session, *, task_id: int, tenant_id: int) -> ModelVersion | None:
    from flywheel.domain.champions import champion_for

    return champion_for(session, task_id, tenant_id)


def tainted_models(session: Session, *, tenant_id: int, limit: int = 20) -> list[ModelVersion]:
    """Model versions the tenant may see (its variants and the shared models) that trained on records erased
    since, newest taint first: the data-rights card of its page."""
    from sqlalchemy import or_

    return list(
        session.scalars(
            select(ModelVersion)
            .where(
                ModelVersion.tainted_at.is_not(None),
                or_(ModelVersion.tenant_id.is_(None), ModelVersion.tenant_id == tenant_id),
            )
            .order_by(ModelVersion.tainted_at.desc(), ModelVersion.id.desc())
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class ModelView:
    """A model as the caller may see it (the retrain API's serializer: other tenants' metrics removed)."""

    out: Any  # flywheel.retrain.outputs.ModelOut
    replaced_id: int | None
    tenant_id: int | None


def models(
    session: Session, principal: Principal, *, tenant_id: int | None, task_id: int | None, limit: int = 200
) -> list[ModelView]:
    """Model versions, newest first: all for an admin; a tenant's own variants and the shared ones otherwise."""
    from flywheel.retrain.outputs import model_out

    stmt = select(ModelVersion).order_by(ModelVersion.id.desc()).limit(limit)
    if tenant_id is not None:
        stmt = stmt.where(or_(ModelVersion.tenant_id == tenant_id, ModelVersion.tenant_id.is_(None)))
    if task_id is not None:
        stmt = stmt.where(ModelVersion.task_id == task_id)
    return [
        ModelView(out=model_out(principal, m), replaced_id=m.replaced_id, tenant_id=m.tenant_id)
        for m in session.scalars(stmt)
    ]


def training_runs(
    session: Session, principal: Principal, *, tenant_id: int | None, task_id: int | None, limit: int = 100
) -> list[Any]:
    """Training runs, newest first, through the retrain API's serializer (``TrainingRunOut``)."""
    from flywheel.retrain.outputs import run_out

    stmt = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)
    if tenant_id is not None:
        stmt = stmt.where(or_(TrainingRun.tenant_id == tenant_id, TrainingRun.tenant_id.is_(None)))
    if task_id is not None:
        stmt = stmt.where(TrainingRun.task_id == task_id)
    return [run_out(session, principal, r) for r in session.scalars(stmt)]


def promote(session: Session, *, model_id: int) -> ModelVersion:
    from flywheel.retrain.registry import promote as promote_model

    return promote_model(session, model_id)


def rollback(session: Session, *, task_id: int, tenant_id: int | None) -> ModelVersion:
    from flywheel.retrain.registry import rollback as rollback_model

    return rollback_model(session, task_id, tenant_id)


def queue_training_run(session: Session, *, task: Task, tenant: Tenant | None, settings: Settings) -> TrainingRun:
    """The retrain area's queueing (what ``POST /v1/training-runs`` does): a zero-shot fallback, then the run."""
    from flywheel.retrain import jobs, registry

    registry.ensure_zero_shot(session, task, settings)
    return jobs.queue_run(session, task, tenant, trigger="dashboard")


def get_model(session: Session, model_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, model_id)
