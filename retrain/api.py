"""Models and training runs (API.md, "Models and training"): the registry and the training queue over HTTP.

Web workers only queue runs; the scheduler process trains them. A tenant key sees the shared models and its own
variants, with per-tenant metrics and lineage reduced to its own tenant; admin keys see everything.
"""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response
from pydantic import BaseModel, Field
from sqlalchemy import or_, select, true
from sqlalchemy.orm import Session

from flywheel.core.errors import Conflict, NotFound
from flywheel.domain import artifacts, champions
from flywheel.domain.auth import Principal
from flywheel.domain.schemas import MAX_ID, Name, QueryInt, Strict
from flywheel.models.records import Task, Tenant
from flywheel.models.training import ModelVersion, TrainingRun
from flywheel.retrain import jobs, registry
from flywheel.retrain.outputs import ModelOut, RunStatus, TrainingRunOut, model_out, run_out
from flywheel.web.context import get_session, get_settings
from flywheel.web.spec import json_response, operation

bp = Blueprint("retrain", __name__, url_prefix="/v1")


class ModelList(BaseModel):
    items: list[ModelOut]


class ModelQuery(Strict):
    task: Name | None = None
    tenant: Name | None = Field(default=None, description="only this tenant's variants ('shared': shared models)")
    status: Literal["candidate", "champion", "retired"] | None = None
    limit: QueryInt = Field(default=100, ge=1, le=1000)


class ScopeIn(Strict):
    tenant: Name | None = Field(default=None, description="the tenant's variant; absent: the shared model")


class RollbackOut(BaseModel):
    champion: ModelOut
    retired: ModelOut


class TrainingRunIn(Strict):
    task: Name
    tenant: Name | None = Field(default=None, description="train this tenant's own variant")


class TrainingRunList(BaseModel):
    items: list[TrainingRunOut]


class RunQuery(Strict):
    task: Name | None = None
    tenant: Name | None = None
    status: RunStatus | None = None
    limit: QueryInt = Field(default=100, ge=1, le=1000)


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
    is_id = ref.isascii() and ref.isdigit() and int(ref) <= MAX_ID  # (an int beyond the column's range: no such id)
    model = session.get(ModelVersion, int(ref)) if is_id else None
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
    errors=(409,),
)
def promote_model(ref: str, *, principal: Principal) -> Response:
    """The previous champion is retired and remembered: ``rollback`` restores it. Running web workers switch
    on their next request."""
    session = get_session()
    model = _model_by_ref(session, ref)
    if model.rung != "zero_shot" and not artifacts.exists(model.artifact_path):
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
    body_required=False,
    responses={200: RollbackOut},
)
def rollback_task(name: str, *, principal: Principal) -> Response:
    """A tenant variant with no earlier champion is retired, and the tenant falls back to the shared model."""
    from flask import request

    from flywheel.web.spec import parse_body

    raw = request.get_data(cache=False)
    scope = parse_body(ScopeIn, raw) if raw.strip() else ScopeIn()
    assert isinstance(scope, ScopeIn)
    session = get_session()
    task = _task(session, name)
    tenant = _tenant(session, scope.tenant)
    current = champions.champion_slot(session, task.id, tenant.id if tenant else None)
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
    errors=(404,),
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
    f"/training-runs/<int(max={MAX_ID}):run_id>",
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
