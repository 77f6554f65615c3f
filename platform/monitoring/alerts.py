"""Alerts on status transitions, and their signed webhook delivery.

An alert is created only when a status changes (the SLA row remembers the last one), so an SLA that stays
``breached`` for a week raises one alert, not 168. Delivery happens after the evaluation is committed, outside any
transaction: each alert is claimed (``pending -> sending``) by one process, POSTed with an HMAC-SHA256 signature of
the exact body, retried with exponential backoff, and every attempt is recorded. A receiver that never answers
leaves the alert ``failed`` and visible in ``GET /v1/alerts``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.models.records import Task, Tenant
from flywheel.models.slas import Alert, Sla, SlaEvaluation, WebhookDelivery

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Flywheel-Signature"
EVENT_HEADER = "X-Flywheel-Event"
DELIVERY_HEADER = "X-Flywheel-Delivery"
QUIET_FIRST = ("met", "insufficient_data")  # a new SLA that starts healthy (or unmeasured) is not news


def sign(secret: str, body: bytes) -> str:
    """The signature header value: ``sha256=<hex HMAC-SHA256 of the body with the tenant's secret>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute the signature and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), header)


def new_secret() -> str:
    return secrets.token_hex(32)


def _payload(
    kind: str, event: str, tenant: Tenant, task: Task, sla: Sla, evaluation: SlaEvaluation, before: str | None
) -> dict[str, Any]:
    return {
        "event": event,
        "kind": kind,
        "tenant": tenant.slug,
        "task": task.name,
        "from": before,
        "to": evaluation.drift_status if kind == "drift" else evaluation.status,
        "metric": sla.metric,
        "threshold": sla.threshold,
        "window_days": sla.window_days,
        "value": evaluation.value,
        "ci_low": evaluation.ci_low,
        "ci_high": evaluation.ci_high,
        "value_clean": evaluation.value_clean,
        "agreement": evaluation.agreement,
        "n_labeled": evaluation.n_labeled,
        "coverage": evaluation.coverage,
        "estimated_value": evaluation.estimated_value,
        "drift": {"status": evaluation.drift_status, "report_id": evaluation.drift_report_id},
        "evaluated_at": evaluation.evaluated_at.isoformat().replace("+00:00", "Z"),
    }


def record_transitions(session: Session, sla: Sla, evaluation: SlaEvaluation) -> list[Alert]:
    """Compare the evaluation with the SLA's last known states; one alert per change. Updates the SLA row."""
    tenant, task = sla.tenant, sla.task
    out: list[Alert] = []
    delivery = "pending" if tenant.webhook_url else "no_webhook"
    before = sla.last_status
    if evaluation.status != before and not (before is None and evaluation.status in QUIET_FIRST):
        message = f"SLA {sla.metric} >= {sla.threshold:g} on {task.name}: {before or 'new'} -> {evaluation.status}"
        out.append(
            Alert(
                tenant_id=sla.tenant_id,
                task_id=sla.task_id,
                sla_id=sla.id,
                evaluation_id=evaluation.id,
                kind="sla_status",
                from_status=before,
                to_status=evaluation.status,
                message=message[:500],
                payload=_payload("sla_status", "sla.status_changed", tenant, task, sla, evaluation, before),
                delivery_status=delivery,
            )
        )
    sla.last_status = evaluation.status
    drift_before = sla.last_drift_status
    drift_now = evaluation.drift_status
    if drift_now != "unknown":
        event = None
        if drift_now == "detected" and drift_before != "detected":
            event = "drift.detected"
        elif drift_now == "none" and drift_before == "detected":
            event = "drift.resolved"
        if event is not None:
            out.append(
                Alert(
                    tenant_id=sla.tenant_id,
                    task_id=sla.task_id,
                    sla_id=sla.id,
                    evaluation_id=evaluation.id,
                    kind="drift",
                    from_status=drift_before,
                    to_status=drift_now,
                    message=f"drift on {task.name}: {drift_before or 'new'} -> {drift_now}",
                    payload=_payload("drift", event, tenant, task, sla, evaluation, drift_before),
                    delivery_status=delivery,
                )
            )
        sla.last_drift_status = drift_now
    if out and tenant.webhook_url and not tenant.webhook_secret:
        tenant.webhook_secret = new_secret()  # signed from the first alert on; the admin reads it from the API
    session.add_all(out)
    session.flush()
    for alert in out:
        alert.payload = {**alert.payload, "alert_id": alert.id}
    return out


def _body(alert: Alert) -> bytes:
    return json.dumps(alert.payload, sort_keys=True, separators=(",", ":")).encode("utf-8")


def deliver_alert(
    db: Database,
    alert_id: int,
    settings: Settings,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """POST one pending alert to its tenant's webhook with retries; returns the final delivery status."""
    import requests

    with db.session() as session:
        claimed = session.execute(
            update(Alert)
            .where(Alert.id == alert_id, Alert.delivery_status == "pending")
            .values(delivery_status="sending")
            .execution_options(synchronize_session=False)
        )
        if getattr(claimed, "rowcount", 0) != 1:
            return "skipped"  # delivered, failed or being sent by another process
        alert = session.get(Alert, alert_id)
        assert alert is not None
        tenant = session.get(Tenant, alert.tenant_id)
        assert tenant is not None
        url, secret = tenant.webhook_url, tenant.webhook_secret
        body = _body(alert)
        event = str(alert.payload.get("event", alert.kind))
        attempts = alert.attempts
    if not url:
        with db.session() as session:
            session.execute(update(Alert).where(Alert.id == alert_id).values(delivery_status="no_webhook"))
        return "no_webhook"
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "flywheel-webhooks/1",
        EVENT_HEADER: event,
        DELIVERY_HEADER: str(alert_id),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    status = "failed"
    for attempt in range(1, settings.webhook_max_attempts + 1):
        started = time.perf_counter()
        code: int | None = None
        error: str | None = None
        try:
            response = requests.post(url, data=body, headers=headers, timeout=settings.webhook_timeout_s)
            code = response.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        elapsed = (time.perf_counter() - started) * 1000
        with db.session() as session:
            session.add(
                WebhookDelivery(
                    alert_id=alert_id,
                    attempt=attempts + attempt,
                    url=url,
                    status_code=code,
                    error=error,
                    duration_ms=round(elapsed, 2),
                )
            )
            values: dict[str, Any] = {"attempts": attempts + attempt}
            if error is None:
                values.update(delivery_status="delivered", delivered_at=utcnow())
            session.execute(update(Alert).where(Alert.id == alert_id).values(**values))
        if error is None:
            status = "delivered"
            break
        log.warning("webhook attempt %s for alert %s failed: %s", attempt, alert_id, error)
        if attempt < settings.webhook_max_attempts:
            sleep(settings.webhook_backoff_s * 2 ** (attempt - 1))
    if status == "failed":
        with db.session() as session:
            session.execute(update(Alert).where(Alert.id == alert_id).values(delivery_status="failed"))
    return status


def deliver_pending(
    db: Database,
    settings: Settings,
    *,
    tenant_ids: list[int] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Deliver every pending alert (optionally of some tenants); counts by final status.

    An alert left ``sending`` for over an hour (its process died mid-delivery) is put back to ``pending`` first.
    """
    with db.session() as session:
        session.execute(
            update(Alert)
            .where(Alert.delivery_status == "sending", Alert.created_at < utcnow() - timedelta(hours=1))
            .values(delivery_status="pending")
            .execution_options(synchronize_session=False)
        )
        stmt = select(Alert.id).where(Alert.delivery_status == "pending").order_by(Alert.id)
        if tenant_ids is not None:
            stmt = stmt.where(Alert.tenant_id.in_(tenant_ids))
        ids = list(session.scalars(stmt))
    counts: dict[str, int] = {}
    for alert_id in ids:
        result = deliver_alert(db, alert_id, settings, sleep=sleep)
        counts[result] = counts.get(result, 0) + 1
    return counts
