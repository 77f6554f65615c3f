"""SLA, drift report, alert and webhook endpoints (API.md, "SLAs"). Every read is scoped to the key's tenant."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from flask import Blueprint, Response
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import defer

from flywheel.core.errors import NotFound
from flywheel.domain.auth import Principal
from flywheel.domain.schemas import MAX_ID, NO_NUL_SCHEMA, HttpUrl, Integer, Name, NoNul, Number, QueryInt, Strict
from flywheel.models.records import Task, Tenant
from flywheel.models.slas import Alert, DriftReport, Sla, SlaChange, SlaEvaluation
from flywheel.monitoring import sla as sla_mod
from flywheel.monitoring.alerts import new_secret
from flywheel.web.context import get_session
from flywheel.web.spec import json_response, operation

bp = Blueprint("monitoring", __name__, url_prefix="/v1")

Status = Literal["met", "at_risk", "breached", "insufficient_data"]
Agreement = Literal["raw", "clean"]


#: ``accuracy``, ``macro_f1``, or ``recall:<label>`` / ``precision:<label>`` for one of the task's labels.
METRIC_PATTERN = r"^(accuracy|macro_f1|(recall|precision):[\s\S]{1,200})$"


class SlaIn(Strict):
    metric: str = Field(
        pattern=METRIC_PATTERN,
        description="accuracy, macro_f1, recall:<label> or precision:<label>, where <label> is one of the task's "
        "labels (422 otherwise)",
    )
    threshold: Number = Field(ge=0, le=1)
    window_days: Integer = Field(default=7, ge=1, le=366)
    min_labeled: Integer = Field(default=200, ge=1, le=MAX_ID)
    warning_margin: Number = Field(default=0.02, ge=0, le=1)
    agreement: Agreement = Field(
        default="raw",
        description="which value the status and alerts read: raw (`value`, every label as given) or clean "
        "(`value_clean`, flagged labels no reviewer decided yet at their label weight)",
    )


class DriftOut(BaseModel):
    status: Literal["none", "detected", "unknown"]
    report_id: int | None = None
    share: float | None = None
    reference: str | None = None
    columns: dict[str, Any] | None = None


class SlaOut(BaseModel):
    """One SLA with its latest evaluation (``value`` measured on labels, ``value_clean`` on reviewed and weighted
    labels, ``estimated_value`` label-free; ``agreement`` says which of the first two the status reads)."""

    tenant: str
    task: str
    metric: str
    threshold: float
    window_days: int
    min_labeled: int
    warning_margin: float
    agreement: Agreement
    version: int
    value: float | None
    ci_low: float | None
    ci_high: float | None
    value_clean: float | None
    ci_low_clean: float | None
    ci_high_clean: float | None
    n_labeled: int
    n_predictions: int
    coverage: float | None
    estimated_value: float | None
    estimated_accuracy: float | None
    calibration_error: float | None
    drift: DriftOut
    status: Status
    evaluated_at: datetime | None


class SlaList(BaseModel):
    items: list[SlaOut]


class EvaluationOut(BaseModel):
    """One evaluation; the terms in force then are included."""

    id: int
    evaluated_at: datetime
    sla_version: int
    metric: str
    threshold: float
    window_days: int
    window_start: datetime
    window_end: datetime
    agreement: Agreement
    value: float | None
    ci_low: float | None
    ci_high: float | None
    value_clean: float | None
    ci_low_clean: float | None
    ci_high_clean: float | None
    n_labeled: int
    n_predictions: int
    coverage: float | None
    estimated_value: float | None
    estimated_accuracy: float | None
    calibration_error: float | None
    status: Status
    drift: DriftOut


class EvaluationList(BaseModel):
    items: list[EvaluationOut]


class SlaChangeOut(BaseModel):
    version: int
    before: dict[str, Any] | None
    after: dict[str, Any]
    changed_by: str | None
    changed_at: datetime


class SlaChangeList(BaseModel):
    items: list[SlaChangeOut]


class AlertOut(BaseModel):
    id: int
    tenant: str
    task: str
    kind: Literal["sla_status", "drift", "model_tainted"]
    from_status: str | None
    to_status: str
    message: str
    payload: dict[str, Any]
    delivery_status: str
    attempts: int
    delivered_at: datetime | None
    created_at: datetime


class AlertList(BaseModel):
    items: list[AlertOut]


class ListQuery(Strict):
    tenant: Name | None = Field(
        default=None,
        description="only this tenant (an admin key sees every tenant without it); a tenant's key may name only its "
        "own (any other: 404)",
    )
    limit: QueryInt = Field(default=100, ge=1, le=1000)


class HistoryQuery(Strict):
    limit: QueryInt = Field(default=100, ge=1, le=1000)


class WebhookIn(Strict):
    url: HttpUrl | None = Field(description="an http(s) URL; null turns webhooks off")
    secret: Annotated[str, StringConstraints(min_length=16, max_length=128), NoNul, NO_NUL_SCHEMA] | None = Field(
        default=None, description="generated when omitted"
    )


class WebhookOut(BaseModel):
    """The tenant's webhook; ``secret`` verifies ``X-Flywheel-Signature: sha256=<hmac hex of the body>``."""

    tenant: str
    url: str | None
    secret: str | None


def _drift(report: DriftReport | None, status: str, report_id: int | None) -> DriftOut:
    if report is None:
        return DriftOut(status=status, report_id=report_id)  # type: ignore[arg-type]
    return DriftOut(
        status=report.status,  # type: ignore[arg-type]
        report_id=report.id,
        share=report.share,
        reference=report.reference_kind,
        columns=(report.summary or {}).get("columns"),
    )


def _reports(rows: list[SlaEvaluation]) -> dict[int, DriftReport]:
    ids = [r.drift_report_id for r in rows if r.drift_report_id is not None]
    if not ids:
        return {}
    # Only the summary columns: the snapshot blob stays in the database.
    stmt = select(DriftReport).where(DriftReport.id.in_(ids)).options(defer(DriftReport.snapshot))
    return {r.id: r for r in get_session().scalars(stmt)}


def sla_out(sla: Sla, evaluation: SlaEvaluation | None, report: DriftReport | None) -> SlaOut:
    terms: dict[str, Any] = {
        "tenant": sla.tenant.slug,
        "task": sla.task.name,
        "metric": sla.metric,
        "threshold": sla.threshold,
        "window_days": sla.window_days,
        "min_labeled": sla.min_labeled,
        "warning_margin": sla.warning_margin,
        "agreement": sla.agreement,
        "version": sla.version,
    }
    if evaluation is None:
        return SlaOut(
            **terms,
            value=None,
            ci_low=None,
            ci_high=None,
            value_clean=None,
            ci_low_clean=None,
            ci_high_clean=None,
            n_labeled=0,
            n_predictions=0,
            coverage=None,
            estimated_value=None,
            estimated_accuracy=None,
            calibration_error=None,
            drift=DriftOut(status="unknown"),
            status="insufficient_data",
            evaluated_at=None,
        )
    return SlaOut(
        **terms,
        value=evaluation.value,
        ci_low=evaluation.ci_low,
        ci_high=evaluation.ci_high,
        value_clean=evaluation.value_clean,
        ci_low_clean=evaluation.ci_low_clean,
        ci_high_clean=evaluation.ci_high_clean,
        n_labeled=evaluation.n_labeled,
        n_predictions=evaluation.n_predictions,
        coverage=evaluation.coverage,
        estimated_value=evaluation.estimated_value,
        estimated_accuracy=evaluation.estimated_accuracy,
        calibration_error=evaluation.calibration_error,
        drift=_drift(report, evaluation.drift_status, evaluation.drift_report_id),
        status=evaluation.status,  # type: ignore[arg-type]
        evaluated_at=evaluation.evaluated_at,
    )


def _scope(principal: Principal, tenant_slug: str, task_name: str) -> tuple[Tenant, Task]:
    session = get_session()
    tenant = principal.tenant_for(session, tenant_slug)
    task = session.scalar(select(Task).where(Task.name == task_name))
    if task is None:
        raise NotFound(f"task '{task_name}' does not exist")
    return tenant, task


def _sla(tenant: Tenant, task: Task) -> Sla:
    sla = get_session().scalar(select(Sla).where(Sla.tenant_id == tenant.id, Sla.task_id == task.id))
    if sla is None:
        raise NotFound(f"no SLA for tenant '{tenant.slug}' on task '{task.name}'")
    return sla


@operation(
    bp,
    "PUT",
    "/slas/<tenant>/<task>",
    summary="Create or change a tenant's SLA on a task",
    scope="admin",
    body=SlaIn,
    responses={201: SlaOut, 200: SlaOut},
)
def put_sla(tenant: str, task: str, *, principal: Principal, body: SlaIn) -> Response:
    """Every change is kept (``GET /v1/slas/{tenant}/{task}/changes``); the next evaluation uses the new terms."""
    session = get_session()
    tenant_row, task_row = _scope(principal, tenant, task)
    terms = sla_mod.SlaTerms(**body.model_dump())
    sla, created = sla_mod.put_sla(session, tenant_row, task_row, terms, changed_by=f"key:{principal.key_id}")
    latest = sla_mod.latest_evaluations(session, [sla.id]).get(sla.id)
    out = sla_out(sla, latest, None)
    session.commit()
    return json_response(out, 201 if created else 200)


@operation(bp, "GET", "/slas", summary="SLAs with their latest evaluation", scope="read", query=ListQuery,
           responses={200: SlaList})  # fmt: skip
def list_slas(*, principal: Principal, query: ListQuery) -> Response:
    """A read key sees its own tenant's SLAs; an admin key sees all (or one tenant with ``?tenant=``)."""
    session = get_session()
    stmt = select(Sla).join(Tenant, Tenant.id == Sla.tenant_id).join(Task, Task.id == Sla.task_id)
    if not principal.is_admin or query.tenant is not None:
        stmt = stmt.where(Sla.tenant_id == principal.tenant_for(session, query.tenant).id)
    slas = list(session.scalars(stmt.order_by(Tenant.slug, Task.name).limit(query.limit)))
    latest = sla_mod.latest_evaluations(session, [s.id for s in slas])
    reports = _reports(list(latest.values()))
    items = [
        sla_out(s, latest.get(s.id), reports.get(latest[s.id].drift_report_id or -1) if s.id in latest else None)
        for s in slas
    ]
    return json_response(SlaList(items=items))


@operation(bp, "GET", "/slas/<tenant>/<task>/history", summary="An SLA's evaluations over time, newest first",
           scope="read", query=HistoryQuery, responses={200: EvaluationList})  # fmt: skip
def sla_history(tenant: str, task: str, *, principal: Principal, query: HistoryQuery) -> Response:
    session = get_session()
    sla = _sla(*_scope(principal, tenant, task))
    rows = list(
        session.scalars(
            select(SlaEvaluation)
            .where(SlaEvaluation.sla_id == sla.id)
            .order_by(SlaEvaluation.evaluated_at.desc(), SlaEvaluation.id.desc())
            .limit(query.limit)
        )
    )
    reports = _reports(rows)
    items = [
        EvaluationOut(
            id=r.id,
            evaluated_at=r.evaluated_at,
            sla_version=r.sla_version,
            metric=r.metric,
            threshold=r.threshold,
            window_days=r.window_days,
            window_start=r.window_start,
            window_end=r.window_end,
            agreement=r.agreement,  # type: ignore[arg-type]
            value=r.value,
            ci_low=r.ci_low,
            ci_high=r.ci_high,
            value_clean=r.value_clean,
            ci_low_clean=r.ci_low_clean,
            ci_high_clean=r.ci_high_clean,
            n_labeled=r.n_labeled,
            n_predictions=r.n_predictions,
            coverage=r.coverage,
            estimated_value=r.estimated_value,
            estimated_accuracy=r.estimated_accuracy,
            calibration_error=r.calibration_error,
            status=r.status,  # type: ignore[arg-type]
            drift=_drift(reports.get(r.drift_report_id or -1), r.drift_status, r.drift_report_id),
        )
        for r in rows
    ]
    return json_response(EvaluationList(items=items))


@operation(bp, "GET", "/slas/<tenant>/<task>/changes", summary="An SLA's change history, newest first",
           scope="read", responses={200: SlaChangeList})  # fmt: skip
def sla_changes(tenant: str, task: str, *, principal: Principal) -> Response:
    session = get_session()
    sla = _sla(*_scope(principal, tenant, task))
    rows = session.scalars(select(SlaChange).where(SlaChange.sla_id == sla.id).order_by(SlaChange.version.desc()))
    items = [
        SlaChangeOut(
            version=r.version, before=r.before, after=r.after, changed_by=r.changed_by, changed_at=r.changed_at
        )
        for r in rows
    ]
    return json_response(SlaChangeList(items=items))


@operation(bp, "GET", f"/reports/<int(max={MAX_ID}):report_id>", summary="An Evidently drift report (HTML)",
           scope="read", responses={200: "text/html"})  # fmt: skip
def get_report(report_id: int, *, principal: Principal) -> Response:
    """Another tenant's report answers 404, exactly like one that does not exist."""
    from flywheel.monitoring.drift import render_html

    report = get_session().get(DriftReport, report_id)
    if report is None or not principal.can_see_tenant(report.tenant_id):
        raise NotFound(f"report {report_id} does not exist")
    if report.snapshot is None:
        html = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Drift report</title></head><body>"
            f"<p>Drift status: {report.status}. Not enough rows to compare "
            f"(reference {report.n_reference}, current {report.n_current}).</p></body></html>"
        )
    else:
        html = render_html(report.snapshot)
    return Response(html, mimetype="text/html")


@operation(bp, "GET", "/alerts", summary="Alerts, newest first", scope="read", query=ListQuery,
           responses={200: AlertList})  # fmt: skip
def list_alerts(*, principal: Principal, query: ListQuery) -> Response:
    session = get_session()
    stmt = (
        select(Alert, Tenant.slug, Task.name)
        .join(Tenant, Tenant.id == Alert.tenant_id)
        .join(Task, Task.id == Alert.task_id)
    )
    if not principal.is_admin or query.tenant is not None:
        stmt = stmt.where(Alert.tenant_id == principal.tenant_for(session, query.tenant).id)
    rows = session.execute(stmt.order_by(Alert.created_at.desc(), Alert.id.desc()).limit(query.limit)).all()
    items = [
        AlertOut(
            id=a.id,
            tenant=slug,
            task=task,
            kind=a.kind,  # type: ignore[arg-type]
            from_status=a.from_status,
            to_status=a.to_status,
            message=a.message,
            payload=a.payload,
            delivery_status=a.delivery_status,
            attempts=a.attempts,
            delivered_at=a.delivered_at,
            created_at=a.created_at,
        )
        for a, slug, task in rows
    ]
    return json_response(AlertList(items=items))


@operation(bp, "PUT", "/tenants/<tenant>/webhook", summary="Set a tenant's alert webhook", scope="admin",
           body=WebhookIn, responses={200: WebhookOut})  # fmt: skip
def put_webhook(tenant: str, *, principal: Principal, body: WebhookIn) -> Response:
    """The signing secret is generated when not given and returned here; keep it to verify deliveries."""
    session = get_session()
    row = principal.tenant_for(session, tenant)
    row.webhook_url = body.url
    if body.url is not None:
        row.webhook_secret = body.secret or row.webhook_secret or new_secret()
    out = WebhookOut(tenant=row.slug, url=row.webhook_url, secret=row.webhook_secret)
    session.commit()
    return json_response(out)


@operation(bp, "GET", "/tenants/<tenant>/webhook", summary="A tenant's alert webhook and secret", scope="admin",
           responses={200: WebhookOut})  # fmt: skip
def get_webhook(tenant: str, *, principal: Principal) -> Response:
    row = principal.tenant_for(get_session(), tenant)
    return json_response(WebhookOut(tenant=row.slug, url=row.webhook_url, secret=row.webhook_secret))
