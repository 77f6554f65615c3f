"""The dashboard's pages: sign-in, overview, tenant page, label review, models and runs, customer report."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask import session as cookie_session
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from flywheel.core.db import utcnow
from flywheel.core.errors import ApiError, NotFound, ServiceUnavailable
from flywheel.dashboard import charts, queries, sources
from flywheel.dashboard.security import (
    CsrfError,
    check_csrf,
    csrf_token,
    current_principal,
    dashboard_allowed,
    find_key,
    load_principal,
    safe_next,
    sign_in,
    sign_out,
    signed_in,
)
from flywheel.domain.auth import Principal
from flywheel.domain.partitions import feedback_joins_prediction
from flywheel.domain.schemas import MAX_ID, NAME_PATTERN
from flywheel.models.records import Feedback, Prediction, Task, Tenant
from flywheel.web.context import get_session, get_settings

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the real platform/ folder, also in an editable install

NAME = re.compile(NAME_PATTERN)

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder=str(_PACKAGE_ROOT / "templates"),
    static_folder=str(_PACKAGE_ROOT / "static"),
    static_url_path="/static",
)

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; frame-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)
# The Evidently report is a self-contained HTML page with inline scripts: it is shown in a sandboxed iframe
# (no same-origin, so its scripts cannot read the dashboard) and may not fetch anything.
REPORT_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data:; "
    "font-src data:; frame-ancestors 'self'; sandbox allow-scripts"
)
REVIEW_KINDS = ("label_issue", "uncertain")
DECISIONS = ("keep", "relabel", "discard")


# --- app wiring --------------------------------------------------------------------------------------------------


@bp.record_once
def _configure_session_cookie(state: Any) -> None:
    app = state.app
    app.config.setdefault("SESSION_COOKIE_HTTPONLY", True)
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    ext = app.extensions.get("flywheel") or {}
    settings = ext.get("settings") if isinstance(ext, dict) else None
    if settings is not None:
        app.config["SESSION_COOKIE_SECURE"] = bool(settings.dashboard_secure_cookie)
        app.permanent_session_lifetime = timedelta(minutes=settings.dashboard_session_minutes)


@bp.app_template_filter("dashboard_json")
def _json_for_script(value: str) -> Markup:
    """JSON text safe inside <script>: '<', '>' and '&' only occur inside JSON strings, where \\uXXXX is equal."""
    return Markup(value.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


@bp.context_processor
def _template_globals() -> dict[str, Any]:
    return {
        "principal": g.get("dashboard_principal"),
        "csrf_token": csrf_token,
        "status_words": sources.STATUS_WORDS,
        "fmt_pct": _fmt_pct,
        "fmt_num": _fmt_num,
        "fmt_time": _fmt_time,
    }


STATIC_ENDPOINTS = frozenset({"dashboard.static", "dashboard.plotly_js"})


@bp.before_request
def _before() -> Response | None:
    if request.endpoint in STATIC_ENDPOINTS:  # files: no session, no database
        g.dashboard_principal = None
        return None
    if current_app.session_interface.is_null_session(cookie_session):  # the stored secret could not be read
        raise ServiceUnavailable("the dashboard cannot sign sessions while the database is unreachable")
    settings = get_settings()
    g.dashboard_principal = load_principal(get_session(), lifetime_s=settings.dashboard_session_minutes * 60)
    check_csrf()
    return None


@bp.after_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if request.endpoint not in STATIC_ENDPOINTS:
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(CsrfError)
def _csrf_refused(exc: CsrfError) -> tuple[str, int]:
    return _error_page(400, "Form expired", str(exc))


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[str, int]:
    return _error_page(exc.status, _title(exc.status), exc.detail)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    status = exc.code or 500
    detail = {403: "This page needs an admin key.", 404: "There is no such page."}.get(status, exc.description or "")
    return _error_page(status, _title(status), detail)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error_page(status: int, title: str, detail: str) -> tuple[str, int]:
    return render_template("dashboard/error.html", status=status, title=title, detail=detail), status


# --- formatting --------------------------------------------------------------------------------------------------


def _fmt_pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def _fmt_num(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _fmt_time(value: datetime | None) -> str:
    return "–" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- scoping -----------------------------------------------------------------------------------------------------


def _is_name(value: str | None) -> bool:
    """A tenant slug or task name can only be of this form: anything else exists nowhere (and is not sent to the
    database, which may refuse to compare it, e.g. a NUL on PostgreSQL)."""
    return value is not None and NAME.fullmatch(value) is not None


def _tenant_or_404(session: Session, principal: Principal, slug: str) -> Tenant:
    """A tenant the caller may see; another tenant's page answers 404, exactly like one that does not exist."""
    tenant = session.scalar(select(Tenant).where(Tenant.slug == slug)) if _is_name(slug) else None
    if tenant is None or not principal.can_see_tenant(tenant.id):
        raise NotFound(f"there is no tenant '{slug}'")
    return tenant


def _visible_tenant_id(principal: Principal) -> int | None:
    return None if principal.is_admin else principal.tenant_id


# --- static ------------------------------------------------------------------------------------------------------


@bp.get("/vendor/plotly.min.js")
def plotly_js() -> Response:
    """plotly.js from the installed plotly package: no CDN (customers run air-gapped)."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    response = send_file(path, mimetype="text/javascript", max_age=86400, conditional=True)
    return response


# --- sign-in -----------------------------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET":
        if g.dashboard_principal is not None:
            return redirect(next_url or url_for("dashboard.overview"))
        return render_template("dashboard/login.html", next=next_url)
    session = get_session()
    row = find_key(session, request.form.get("api_key", ""))
    if row is None or not dashboard_allowed(row):
        message = (
            "That API key is unknown or revoked."
            if row is None
            else "That API key cannot read data: the dashboard needs the read or admin scope."
        )
        flash(message, "error")
        return render_template("dashboard/login.html", next=next_url), 401
    sign_in(row)
    return redirect(next_url or url_for("dashboard.overview"))


@bp.post("/logout")
def logout() -> Any:
    sign_out()
    flash("Signed out.", "ok")
    return redirect(url_for("dashboard.login"))


# --- overview ----------------------------------------------------------------------------------------------------


def overview_rows(session: Session, principal: Principal) -> list[sources.SlaRow]:
    """Every visible tenant × task: SLA rows from monitoring, plus pairs with predictions but no SLA; worst first."""
    tenant_id = _visible_tenant_id(principal)
    rows = sources.sla_rows(session, tenant_id=tenant_id)
    seen = {(r.tenant, r.task) for r in rows}
    for tenant, task in queries.tenant_task_pairs(session, tenant_id=tenant_id):
        if (tenant.slug, task.name) not in seen:
            rows.append(sources.SlaRow(tenant=tenant.slug, tenant_name=tenant.name, task=task.name))
    rows.sort(key=lambda r: r.sort_key)
    return rows


@bp.get("/")
@signed_in
def overview() -> str:
    principal = current_principal()
    rows = overview_rows(get_session(), principal)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    wanted = request.args.get("status") or ""
    statuses = [s for s in wanted.split(",") if s in sources.STATUS_RANK]
    shown = [r for r in rows if r.status in statuses] if statuses else rows
    return render_template(
        "dashboard/overview.html",
        rows=shown,
        counts=counts,
        total=len(rows),
        active=statuses,
        all_statuses=list(sources.STATUS_RANK),
    )


# --- tenant page -------------------------------------------------------------------------------------------------


@bp.get("/tenants/<tenant>")
@signed_in
def tenant(tenant: str) -> str:
    principal = current_principal()
    session = get_session()
    row = _tenant_or_404(session, principal, tenant)
    sla_by_task = {r.task: r for r in sources.sla_rows(session, tenant_id=row.id) if r.tenant == row.slug}
    tasks = {t.name: t for t in queries.tenant_tasks(session, tenant_id=row.id)}
    for name in sla_by_task:
        if name not in tasks:
            task_row = session.scalar(select(Task).where(Task.name == name))
            if task_row is not None:
                tasks[name] = task_row
    ordered = sorted(
        tasks.values(),
        key=lambda t: sla_by_task.get(t.name, sources.SlaRow(row.slug, row.name, t.name)).sort_key,
    )
    selected_name = request.args.get("task") or (ordered[0].name if ordered else None)
    selected = tasks.get(selected_name) if selected_name else None
    if selected_name and selected is None:
        raise NotFound(f"tenant '{row.slug}' has no task '{selected_name}'")
    days = max(1, min(request.args.get("days", 30, type=int) or 30, 365))
    now = utcnow()
    context: dict[str, Any] = {
        "tenant": row,
        "tasks": ordered,
        "task": selected,
        "days": days,
        "sla": None,
        "tainted": sources.tainted_models(session, tenant_id=row.id),
    }
    chart_json: dict[str, str] = {}
    if selected is not None:
        sla = sla_by_task.get(selected.name)
        history = sources.sla_history(session, tenant_id=row.id, task_id=selected.id, since=now - timedelta(days=days))
        window = timedelta(days=(sla.window_days if sla and sla.window_days else 7))
        bins = queries.calibration_bins(session, tenant_id=row.id, task_id=selected.id, since=now - window, until=now)
        ece = charts.expected_calibration_error(bins)
        if history:
            chart_json["chart-metric"] = charts.metric_over_time(
                history, metric=sla.metric if sla and sla.metric else "metric", threshold=sla.threshold if sla else None
            )
            chart_json["chart-coverage"] = charts.coverage_over_time(history)
        chart_json["chart-calibration"] = charts.calibration(bins, ece=ece)
        context.update(
            sla=sla,
            history=history,
            bins=bins,
            ece=ece,
            calibration_window_days=window.days,
            report=sources.latest_drift_report(session, tenant_id=row.id, task_id=selected.id),
            alerts=sources.alerts(session, tenant_id=row.id, task_id=selected.id),
            serving=sources.serving_model(session, task_id=selected.id, tenant_id=row.id),
        )
    return render_template("dashboard/tenant.html", charts=chart_json, **context)


@bp.get(f"/reports/<int(max={MAX_ID}):report_id>")
@signed_in
def drift_report(report_id: int) -> Response:
    principal = current_principal()
    html = sources.drift_report_html(get_session(), report_id=report_id, tenant_id=_visible_tenant_id(principal))
    if html is None:
        raise NotFound(f"there is no report {report_id}")
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = REPORT_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


# --- label review ------------------------------------------------------------------------------------------------


@bp.get("/review")
@signed_in
def review_index() -> Any:
    principal = current_principal()
    if not principal.is_admin and principal.tenant_slug:
        return redirect(url_for("dashboard.review", tenant=principal.tenant_slug))
    tenants = queries.visible_tenants(get_session(), tenant_id=None)
    return render_template("dashboard/review_index.html", tenants=tenants)


@bp.get("/tenants/<tenant>/review")
@signed_in
def review(tenant: str) -> str:
    principal = current_principal()
    session = get_session()
    row = _tenant_or_404(session, principal, tenant)
    tasks = queries.tenant_tasks(session, tenant_id=row.id)
    task_name = request.args.get("task") or (tasks[0].name if tasks else None)
    task = next((t for t in tasks if t.name == task_name), None)
    if task_name and task is None:
        raise NotFound(f"tenant '{row.slug}' has no task '{task_name}'")
    kind = request.args.get("kind", "label_issue")
    if kind not in REVIEW_KINDS:
        kind = "label_issue"
    items = sources.review_queue(session, tenant=row, task=task, kind=kind, limit=25) if task else []
    recent = _recent_reviews(session, tenant_id=row.id)
    return render_template(
        "dashboard/review.html",
        tenant=row,
        tasks=tasks,
        task=task,
        kind=kind,
        kinds=REVIEW_KINDS,
        items=items,
        recent=recent,
        can_decide=_can_review(principal),
    )


def _can_review(principal: Principal) -> bool:
    # A reviewer decision is written feedback: it takes a key that may write (ingest) or an admin key.
    return principal.is_admin or "ingest" in principal.scopes


def _recent_reviews(session: Session, *, tenant_id: int, limit: int = 20) -> list[tuple[Feedback, Prediction]]:
    stmt = (
        select(Feedback, Prediction)
        .join(Prediction, feedback_joins_prediction())
        .where(Feedback.tenant_id == tenant_id, Feedback.source == "reviewer")
        .order_by(Feedback.id.desc())
        .limit(limit)
    )
    return [(f, p) for f, p in session.execute(stmt).tuples()]


@bp.post(f"/tenants/<tenant>/review/<int(max={MAX_ID}):prediction_id>")
@signed_in
def review_decide(tenant: str, prediction_id: int) -> Any:
    principal = current_principal()
    if not _can_review(principal):
        abort(403)
    session = get_session()
    row = _tenant_or_404(session, principal, tenant)
    prediction = session.get(Prediction, prediction_id)
    if prediction is None or prediction.tenant_id != row.id:
        raise NotFound(f"there is no prediction {prediction_id}")
    decision = request.form.get("decision", "")
    label = (request.form.get("label") or "").strip() or None
    note = (request.form.get("note") or "").replace("\x00", "").strip()[:5000] or None  # NUL: no text column holds it
    back = url_for("dashboard.review", tenant=row.slug, task=prediction.task.name, kind=request.form.get("kind"))
    if decision not in DECISIONS:
        flash(f"Unknown decision '{decision}'.", "error")
        return redirect(back)
    if decision == "relabel" and (label is None or label not in prediction.task.labels):
        flash("Relabel needs one of the task's labels.", "error")
        return redirect(back)
    reviewer = f"dashboard:key-{principal.key_id}"
    sources.record_review(
        session,
        prediction=prediction,
        decision=decision,
        label=label if decision == "relabel" else None,
        note=note,
        reviewer=reviewer,
    )
    session.commit()
    words = {"keep": "kept", "relabel": f"relabelled as “{label}”", "discard": "discarded"}[decision]
    flash(f"Recorded: prediction {prediction.client_id} {words}.", "ok")
    return redirect(back)


# --- models and runs ---------------------------------------------------------------------------------------------


@bp.get("/models")
@signed_in
def models() -> str:
    principal = current_principal()
    session = get_session()
    tenant_id = _visible_tenant_id(principal)
    task_name = request.args.get("task") or None
    task = session.scalar(select(Task).where(Task.name == task_name)) if _is_name(task_name) else None
    task_id = task.id if task else None
    model_rows = sources.models(session, principal, tenant_id=tenant_id, task_id=task_id)
    runs = sources.training_runs(session, principal, tenant_id=tenant_id, task_id=task_id)
    all_tasks = list(session.scalars(select(Task).order_by(Task.name)))
    return render_template("dashboard/models.html", models=model_rows, runs=runs, task=task, tasks=all_tasks)


@bp.route(f"/models/<int(max={MAX_ID}):model_id>/promote", methods=["GET", "POST"])
@signed_in
def promote(model_id: int) -> Any:
    principal = current_principal()
    if not principal.is_admin:
        abort(403)
    session = get_session()
    model = sources.get_model(session, model_id)
    if model is None:
        raise NotFound(f"there is no model {model_id}")
    if request.method == "GET" or request.form.get("confirm") != "yes":
        current = sources.serving_model(session, task_id=model.task_id, tenant_id=model.tenant_id or 0)
        return render_template("dashboard/confirm.html", action="promote", model=model, current=current)
    promoted = sources.promote(session, model_id=model.id)
    session.commit()
    flash(f"Promoted {promoted.version}: it now serves {_scope_words(promoted)}.", "ok")
    return redirect(url_for("dashboard.models"))


def _admin_scope(session: Any, values: Any) -> tuple[Task, Tenant | None]:
    """The task and optional tenant an admin action names (form or query); 403 for non-admins, 404 if unknown."""
    if not current_principal().is_admin:
        abort(403)
    task_name = values.get("task", "")
    task = session.scalar(select(Task).where(Task.name == task_name)) if _is_name(task_name) else None
    if task is None:
        raise NotFound("there is no such task")
    tenant_slug = values.get("tenant") or None
    tenant_row = session.scalar(select(Tenant).where(Tenant.slug == tenant_slug)) if _is_name(tenant_slug) else None
    if tenant_slug and tenant_row is None:
        raise NotFound(f"there is no tenant '{tenant_slug}'")
    return task, tenant_row


@bp.route("/models/rollback", methods=["GET", "POST"])
@signed_in
def rollback() -> Any:
    session = get_session()
    task, tenant_row = _admin_scope(session, request.values)
    tenant_id = tenant_row.id if tenant_row else None
    if request.method == "GET" or request.form.get("confirm") != "yes":
        from flywheel.domain.champions import champion_slot

        slot = champion_slot(session, task.id, tenant_id)
        current = sources.get_model(session, slot.model_id) if slot else None
        previous = sources.get_model(session, current.replaced_id) if current and current.replaced_id else None
        return render_template(
            "dashboard/confirm.html",
            action="rollback",
            task=task,
            scope_tenant=tenant_row,
            current=current,
            previous=previous,
        )
    restored = sources.rollback(session, task_id=task.id, tenant_id=tenant_id)
    session.commit()
    flash(f"Rolled back: {restored.version} serves {_scope_words(restored, tenant_row)} again.", "ok")
    return redirect(url_for("dashboard.models"))


@bp.post("/training-runs")
@signed_in
def queue_training_run() -> Any:
    """Queue a training run (admin), exactly as ``POST /v1/training-runs`` does; the scheduler picks it up."""
    session = get_session()
    task, tenant_row = _admin_scope(session, request.form)
    run = sources.queue_training_run(session, task=task, tenant=tenant_row, settings=get_settings())
    session.commit()
    scope = f"{tenant_row.slug} on {task.name}" if tenant_row else f"{task.name} (shared model)"
    flash(f"Training run #{run.id} for {scope} is {run.status}.", "ok")
    return redirect(url_for("dashboard.models", task=task.name))


def _scope_words(model: Any, tenant_row: Tenant | None = None) -> str:
    if tenant_row is not None:
        return f"{tenant_row.slug} on {model.task.name}"
    if model.tenant is not None:
        return f"{model.tenant.slug} on {model.task.name}"
    return f"every tenant on {model.task.name} without its own model"


# --- customer report ---------------------------------------------------------------------------------------------


def _period() -> tuple[date, date]:
    today = utcnow().date()
    try:
        end = date.fromisoformat(request.args["end"]) if request.args.get("end") else today
        start = date.fromisoformat(request.args["start"]) if request.args.get("start") else end - timedelta(days=29)
        end + timedelta(days=1)  # the report reads up to the next day: it must exist (OverflowError otherwise)
    except (ValueError, OverflowError):
        abort(400, "start and end are dates like 2026-11-01, before 9999-12-31")
    if start > end:
        start, end = end, start
    if (end - start).days > 366:
        abort(400, "a report covers at most a year")
    return start, end


def _report_data(session: Session, tenant_row: Tenant, start: date, end: date) -> dict[str, Any]:
    since = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    until = datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    daily = queries.daily_volume(session, tenant_id=tenant_row.id, since=since, until=until)
    totals: dict[str, dict[str, int]] = {}
    for d in daily:  # one row per task and day, already aggregated in SQL
        t = totals.setdefault(d.task, {"predictions": 0, "labeled": 0, "correct": 0})
        t["predictions"] += d.predictions
        t["labeled"] += d.labeled
        t["correct"] += d.correct
    slas = {r.task: r for r in sources.sla_rows(session, tenant_id=tenant_row.id)}
    evaluations = sources.evaluation_summary(session, tenant_id=tenant_row.id, since=since, until=until)
    per_day = sources.daily_evaluations(session, tenant_id=tenant_row.id, since=since, until=until)
    last_in_period: dict[str, charts.MetricPoint] = {}
    for (task_name, _day), point in sorted(per_day.items(), key=lambda kv: kv[1].at):
        last_in_period[task_name] = point
    summary = []
    for task_name in sorted(set(totals) | set(slas)):
        t = totals.get(task_name, {"predictions": 0, "labeled": 0, "correct": 0})
        ev = evaluations.get(task_name)
        summary.append(
            {
                "task": task_name,
                "sla": slas.get(task_name),
                "evaluations": ev.evaluations if ev else 0,
                "met_share": ev.met_share if ev else None,
                "worst": ev.worst if ev else None,
                "last": last_in_period.get(task_name),
                "predictions": t["predictions"],
                "labeled": t["labeled"],
                "coverage": t["labeled"] / t["predictions"] if t["predictions"] else None,
                "accuracy": t["correct"] / t["labeled"] if t["labeled"] else None,
            }
        )
    return {
        "summary": summary,
        "daily": daily,
        "slas": slas,
        "per_day": per_day,
        "alerts": sources.alerts(session, tenant_id=tenant_row.id, since=since, until=until, limit=500),
        "since": since,
        "until": until,
    }


@bp.get("/tenants/<tenant>/report")
@signed_in
def report(tenant: str) -> str:
    principal = current_principal()
    session = get_session()
    row = _tenant_or_404(session, principal, tenant)
    start, end = _period()
    data = _report_data(session, row, start, end)
    return render_template("dashboard/report.html", tenant=row, start=start, end=end, generated_at=utcnow(), **data)


@bp.get("/tenants/<tenant>/report.csv")
@signed_in
def report_csv(tenant: str) -> Response:
    principal = current_principal()
    session = get_session()
    row = _tenant_or_404(session, principal, tenant)
    start, end = _period()
    data = _report_data(session, row, start, end)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "tenant",
            "task",
            "date",
            "predictions",
            "labeled",
            "coverage",
            "accuracy_on_labeled",
            "sla_metric",
            "sla_threshold",
            "sla_status",
            "sla_value",
            "ci_low",
            "ci_high",
            "estimated_value",
        ]
    )
    for d in data["daily"]:
        sla = data["slas"].get(d.task)
        last = data["per_day"].get((d.task, d.day))
        writer.writerow(
            [
                row.slug,
                d.task,
                d.day.isoformat(),
                d.predictions,
                d.labeled,
                _csv_num(d.coverage),
                _csv_num(d.accuracy),
                sla.metric if sla else "",
                _csv_num(sla.threshold if sla else None),
                last.status if last else "",
                _csv_num(last.value if last else None),
                _csv_num(last.ci_low if last else None),
                _csv_num(last.ci_high if last else None),
                _csv_num(last.estimated_value if last else None),
            ]
        )
    filename = f"flywheel-sla-{row.slug}-{start.isoformat()}-{end.isoformat()}.csv"
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _csv_num(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
