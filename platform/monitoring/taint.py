"""Tainted champions that outlive their welcome: an alert when a serving model still trained on erased records.

Erasure taints the model versions an erased record trained (``flywheel.domain.erasure``) and the nightly run
retrains each tainted champion without the removed data, so the gate normally replaces it within a day. When it
cannot (the gate keeps refusing, or there is too little data left to train), the champion keeps serving records
that a customer asked to erase: after ``tainted_max_days`` that raises one alert per affected tenant, delivered like
every other alert (signed webhook, ``GET /v1/alerts``). Affected: the variant's own tenant; for a shared model, each
active tenant it serves (one with predictions on the task and no variant of its own).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.models.records import Prediction, Tenant
from flywheel.models.slas import Alert
from flywheel.models.training import ChampionSlot, ModelVersion
from flywheel.monitoring.alerts import deliver_pending

log = logging.getLogger(__name__)


def served_tenants(session: Session, model: ModelVersion) -> list[Tenant]:
    """The active tenants a champion serves: its own tenant for a variant; for a shared model, every tenant with
    predictions on its task and no variant of its own."""
    if model.tenant_id is not None:
        tenant = session.get(Tenant, model.tenant_id)
        return [tenant] if tenant is not None and tenant.status == "active" else []
    has_data = exists().where(Prediction.tenant_id == Tenant.id, Prediction.task_id == model.task_id)
    has_variant = exists().where(ChampionSlot.tenant_id == Tenant.id, ChampionSlot.task_id == model.task_id)
    return list(
        session.scalars(select(Tenant).where(Tenant.status == "active", has_data, ~has_variant).order_by(Tenant.id))
    )


def _payload(model: ModelVersion, tenant: Tenant, max_days: int) -> dict[str, Any]:
    return {
        "event": "model.tainted",
        "kind": "model_tainted",
        "tenant": tenant.slug,
        "task": model.task.name,
        "model_id": model.id,
        "version": model.version,
        "shared": model.tenant_id is None,
        "tainted_rows": model.tainted_rows,
        "tainted_since": model.tainted_at.isoformat().replace("+00:00", "Z") if model.tainted_at else None,
        "max_days": max_days,
    }


def alert_stale_taints(session: Session, settings: Settings, *, now: datetime | None = None) -> list[Alert]:
    """One alert per served tenant for each champion tainted longer than ``tainted_max_days`` and not yet alerted
    (``taint_alerted_at``), so it fires once, not every night."""
    now = now or utcnow()
    cutoff = now - timedelta(days=settings.tainted_max_days)
    stale = session.scalars(
        select(ModelVersion).where(
            ModelVersion.status == "champion",
            ModelVersion.tainted_at < cutoff,
            ModelVersion.taint_alerted_at.is_(None),
        )
    ).all()
    out: list[Alert] = []
    for model in stale:
        for tenant in served_tenants(session, model):
            out.append(
                Alert(
                    tenant_id=tenant.id,
                    task_id=model.task_id,
                    kind="model_tainted",
                    from_status=None,
                    to_status="tainted",
                    message=(
                        f"model {model.version} still serves {model.task.name} {settings.tainted_max_days}+ days after"
                        f" {model.tainted_rows} of its training rows were erased; retraining has not replaced it"
                    )[:500],
                    payload=_payload(model, tenant, settings.tainted_max_days),
                    delivery_status="pending" if tenant.webhook_url else "no_webhook",
                    created_at=now,
                )
            )
        model.taint_alerted_at = now
    session.add_all(out)
    session.flush()
    for alert in out:
        alert.payload = {**alert.payload, "alert_id": alert.id}
    return out


def check_tainted_models(db: Database, settings: Settings, *, now: datetime | None = None) -> list[int]:
    """The nightly check: raise the alerts, commit, then deliver them. Returns the new alerts' ids."""
    with db.session() as session:
        alerts = alert_stale_taints(session, settings, now=now)
        ids, tenants = [a.id for a in alerts], sorted({a.tenant_id for a in alerts})
    if ids:
        log.warning("tainted champions past %s days: alerts %s", settings.tainted_max_days, ids)
        deliver_pending(db, settings, tenant_ids=tenants)
    return ids


def nightly_data_rights(db: Database, settings: Settings, *, now: datetime | None = None) -> dict[str, Any]:
    """The nightly data-rights job (the scheduler's, or a worker's with a broker): retention first (each tenant's
    records older than its ``retention_days``, erased in batches), then the alert on champions tainted too long."""
    from flywheel.domain.erasure import run_retention

    expired = run_retention(db, now=now, batch_size=settings.erasure_batch_size, default_days=settings.retention_days)
    return {"retention": expired, "taint_alerts": check_tainted_models(db, settings, now=now)}
