"""Models and training runs (API.md, "Models and training"): the registry and the training queue over HTTP.

Web workers only queue runs; the scheduler process trains them. A tenant key sees the shared models and its own
variants, with per-tenant metrics and lineage reduced to its own tenant; admin keys see everything.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from flask import Blueprint, Response
from pydantic import BaseModel, Field
from sqlalchemy import or_, select, true
from sqlalchemy.orm import Session

from flywheel.api.schemas import Name, Strict
from flywheel.api.spec import json_response, operation
from flywheel.auth import Principal
from flywheel.context import get_session, get_settings
from flywheel.errors import Conflict, NotFound
from flywheel.models.core import Task, Tenant
from flywheel.models.registry import ModelVersion, TrainingRun
from flywheel.retrain import jobs, registry

bp = Blueprint("retrain", __name__, url_prefix="/v1")

Rung = Literal["zero_shot", "few_shot", "fine_tuned"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "rejected"]


class ModelOut(BaseModel):
    """A model version. ``tenant`` null: the task's shared model."""

    id: int
    task: str
    tenant: str | None
    version: str
    rung: Rung
    status: Literal["candidate", "champion", "retired"]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    training_run_id: int | None
    created_at: datetime
    promoted_at: datetime | None


class ModelList(BaseModel):
    items: list[ModelOut]


class ModelQuery(Strict):
    task: Name | None = None
    tenant: Name | None = Field(default=None, description="only this tenant's variants ('shared': shared models)")
    status: Literal["candidate", "champion", "retired"] | None = None
    limit: int = Field(default=100, ge=1, le=1000)


class ScopeIn(Strict):
    tenant: Name | None = Field(default=None, description="the tenant's variant; absent: the shared model")


class RollbackOut(BaseModel):
    champion: ModelOut
    retired: ModelOut


class TrainingRunIn(Strict):
    task: Name
    tenant: Name | None = Field(default=None, description="train this tenant's own variant")


class TrainingRunOut(BaseModel):
    id: int
    task: str
    tenant: str | None
    status: RunStatus
    trigger: str
    rung: str | None
    progress: float
    message: str | None
    metrics: dict[str, Any]
    decision: str | None
    reasons: list[str]
    model_id: int | None
    model_version: str | None
    lineage: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TrainingRunList(BaseModel):
    items: list[TrainingRunOut]


class RunQuery(Strict):
    task: Name | None = None
    tenant: Name | None = None
    status: RunStatus | None = None
    limit: int = Field(default=100, ge=1, le=1000)


# --- serializers: what a tenant may see -------------------------------------------------------------------------


def _only_tenant(value: Any, slug: str | None) -> Any:
    """Drop other tenants' entries from ``{"tenants": {slug: ...}}`` maps, at any depth."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in ("tenants", "holdout_tenants") and isinstance(v, dict):
                out[k] = {s: _only_tenant(x, slug) for s, x in v.items() if s == slug}
            else:
                out[k] = _only_tenant(v, slug)
        return out
    if isinstance(value, list):
        return [_only_tenant(v, slug) for v in value]
    return value


def _scoped(principal: Principal, value: dict[str, Any]) -> dict[str, Any]:
    return value if principal.is_admin else _only_tenant(value or {}, principal.tenant_slug)


def model_out(principal: Principal, m: ModelVersion) -> ModelOut:
    return ModelOut(
        id=m.id,
        task=m.task.name,
        tenant=m.tenant.slug if m.tenant else None,
        version=m.version,
        rung=m.rung,  # type: ignore[arg-type]
        status=m.status,  # type: ignore[arg-type]
        metrics=_scoped(principal, m.metrics or {}),
        lineage=_scoped(principal, m.lineage or {}),
        training_run_id=m.training_run_id,
        created_at=m.created_at,
        promoted_at=m.promoted_at,
    )


def run_out(session: Session, principal: Principal, r: TrainingRun) -> TrainingRunOut:
    version = session.scalar(select(ModelVersion.version).where(ModelVersion.id == r.model_id)) if r.model_id else None
    reasons = list(r.reasons or [])
    if not principal.is_admin:  # reasons name tenants ("tenant acme: ..."): keep the caller's own and the rest
        reasons = [
            x for x in reasons if not x.startswith("tenant ") or x.startswith(f"tenant {principal.tenant_slug}:")
        ]
    return TrainingRunOut(
        id=r.id,
        task=r.task.name,
        tenant=r.tenant.slug if r.tenant else None,
        status=r.status,  # type: ignore[arg-type]
        trigger=r.trigger,
        rung=r.rung,
        progress=r.progress,
        message=r.message,
        metrics=_scoped(principal, r.metrics or {}),
        decision=r.decision,
        reasons=reasons,
        model_id=r.model_id,
        model_version=version,
        lineage=_scoped(principal, r.lineage or {}),
        error=r.error if principal.is_admin else (None if r.error is None else "the run failed"),
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


def _task(session: Session, name: str) -> Task:
    task = session.scalar(select(Task).where(Task.name == name))
    if task is None:
        raise NotFound(f"task '{name}' does not exist")
    return task


def _tenant(session: Session, slug: str | None) -> Tenant | None:
    if slug is None:
        return None
    tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"tenant '{slug}' does not exist")
    return tenant


def _visible(principal: Principal, column: Any) -> Any:
    """Rows a key may see: all for admin; shared rows and the key's own tenant's otherwise."""
    if principal.is_admin:
        return true()
    return or_(column.is_(None), column == principal.tenant_id)


# --- models -----------------------------------------------------------------------------------------------------


@operation(
    bp, "GET", "/models", summary="List model versions", scope="read", query=ModelQuery, responses={200: ModelList}
)
def list_models(*, principal: Principal, query: ModelQuery) -> Response:
    """Newest first. Tenant keys see shared models and their own variants."""
    session = get_session()
    stmt = select(ModelVersion).where(_visible(principal, ModelVersion.tenant_id))
    if query.task:
        stmt = stmt.where(ModelVersion.task_id == _task(session, query.task).id)
    if query.tenant == "shared":
        stmt = stmt.where(ModelVersion.tenant_id.is_(None))
    elif query.tenant:
        tenant = _tenant(session, query.tenant)
        if tenant is None or not principal.can_see_tenant(tenant.id):
            raise NotFound(f"tenant '{query.tenant}' does not exist")
        stmt = stmt.where(ModelVersion.tenant_id == tenant.id)
    if query.status:
        stmt = stmt.where(ModelVersion.status == query.status)
    rows = session.scalars(stmt.order_by(ModelVersion.id.desc()).limit(query.limit))
    return json_response(ModelList(items=[model_out(principal, m) for m in rows]))


def _model_by_ref(session: Session, ref: str) -> ModelVersion:
    model = session.get(ModelVersion, int(ref)) if ref.isdigit() else None
    if model is None:
        model = session.scalar(select(ModelVersion).where(ModelVersion.version == ref))
    if model is None:
        raise NotFound(f"model '{ref}' does not exist")
    return model


@operation(
    bp,
    "GET",
    "/models/<ref>",
    summary="Get a model version (by id or version)",
    scope="read",
    responses={200: ModelOut},
)
def get_model(ref: str, *, principal: Principal) -> Response:
    session = get_session()
    model = _model_by_ref(session, ref)
    if model.tenant_id is not None and not principal.can_see_tenant(model.tenant_id):
        raise NotFound(f"model '{ref}' does not exist")
    return json_response(model_out(principal, model))


@operation(
    bp,
    "POST",
    "/models/<ref>/promote",
    summary="Make a model version the champion of its scope",
    scope="admin",
    responses={200: ModelOut},
)
def promote_model(ref: str, *, principal: Principal) -> Response:
    """The previous champion is retired and remembered: ``rollback`` restores it. Running web workers switch
    on their next request."""
    session = get_session()
    model = _model_by_ref(session, ref)
    if model.rung != "zero_shot" and not (model.artifact_path and Path(model.artifact_path).exists()):
        raise Conflict(f"the artifact of {model.version} is missing ({model.artifact_path}); it cannot serve")
    model = registry.promote(session, model.id)
    out = model_out(principal, model)
    session.commit()
    return json_response(out)


@operation(
    bp,
    "POST",
    "/tasks/<name>/rollback",
    summary="Restore the previous champion of a task (or of one tenant's variant)",
    scope="admin",
    documented_body=ScopeIn,
    responses={200: RollbackOut},
)
def rollback_task(name: str, *, principal: Principal) -> Response:
    """A tenant variant with no earlier champion is retired, and the tenant falls back to the shared model."""
    from flask import request

    from flywheel.api.spec import parse_body

    raw = request.get_data(cache=False)
    scope = parse_body(ScopeIn, raw) if raw.strip() else ScopeIn()
    assert isinstance(scope, ScopeIn)
    session = get_session()
    task = _task(session, name)
    tenant = _tenant(session, scope.tenant)
    current = registry.champion_slot(session, task.id, tenant.id if tenant else None)
    if current is None:
        raise NotFound("there is no champion to roll back in this scope")
    retired = session.get(ModelVersion, current.model_id)
    assert retired is not None
    champion = registry.rollback(session, task.id, tenant.id if tenant else None)
    out = RollbackOut(champion=model_out(principal, champion), retired=model_out(principal, retired))
    session.commit()
    return json_response(out)


# --- training runs ----------------------------------------------------------------------------------------------


@operation(
    bp,
    "POST",
    "/training-runs",
    summary="Queue a training run (the scheduler picks it up within seconds)",
    scope="admin",
    body=TrainingRunIn,
    responses={202: TrainingRunOut},
)
def post_training_run(*, principal: Principal, body: TrainingRunIn) -> Response:
    """Answers 202 with the run's ``id``; a run already queued for the same scope is returned instead."""
    session = get_session()
    task = _task(session, body.task)
    tenant = _tenant(session, body.tenant)
    registry.ensure_zero_shot(session, task, get_settings())
    run = jobs.queue_run(session, task, tenant, trigger="api")
    session.commit()
    return json_response(run_out(session, principal, run), 202)


@operation(
    bp,
    "GET",
    "/training-runs",
    summary="List training runs",
    scope="read",
    query=RunQuery,
    responses={200: TrainingRunList},
)
def list_training_runs(*, principal: Principal, query: RunQuery) -> Response:
    session = get_session()
    stmt = select(TrainingRun).where(_visible(principal, TrainingRun.tenant_id))
    if query.task:
        stmt = stmt.where(TrainingRun.task_id == _task(session, query.task).id)
    if query.tenant:
        tenant = _tenant(session, query.tenant)
        if tenant is None or not principal.can_see_tenant(tenant.id):
            raise NotFound(f"tenant '{query.tenant}' does not exist")
        stmt = stmt.where(TrainingRun.tenant_id == tenant.id)
    if query.status:
        stmt = stmt.where(TrainingRun.status == query.status)
    rows = list(session.scalars(stmt.order_by(TrainingRun.id.desc()).limit(query.limit)))
    return json_response(TrainingRunList(items=[run_out(session, principal, r) for r in rows]))


@operation(
    bp,
    "GET",
    "/training-runs/<int:run_id>",
    summary="Follow a training run",
    scope="read",
    responses={200: TrainingRunOut},
)
def get_training_run(run_id: int, *, principal: Principal) -> Response:
    session = get_session()
    run = session.get(TrainingRun, run_id)
    if run is None or (run.tenant_id is not None and not principal.can_see_tenant(run.tenant_id)):
        raise NotFound(f"training run {run_id} does not exist")
    return json_response(run_out(session, principal, run))
