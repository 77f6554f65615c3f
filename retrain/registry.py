"""The model registry: which model serves each (task, tenant), promotion, rollback, and loading a model to serve.

Services here take the session first and never commit; the caller's single transaction makes every status change
atomic (the champion slot row and both model rows change together or not at all).
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flywheel.core.db import utcnow
from flywheel.core.errors import Conflict, NotFound
from flywheel.domain import artifacts
from flywheel.domain.champions import champion_slot, tenant_key
from flywheel.models.records import Task, Tenant
from flywheel.models.training import ChampionSlot, ModelVersion

if TYPE_CHECKING:
    from flywheel.core.config import Settings


def version_name(session: Session, task: Task, tenant: Tenant | None) -> str:
    """``<task>-v<n>`` for the shared model, ``<task>@<tenant>-v<n>`` for a tenant's variant."""
    count = session.scalar(
        select(func.count())
        .select_from(ModelVersion)
        .where(
            ModelVersion.task_id == task.id,
            ModelVersion.tenant_id.is_(None) if tenant is None else ModelVersion.tenant_id == tenant.id,
        )
    )
    scope = task.name if tenant is None else f"{task.name}@{tenant.slug}"
    n = int(count or 0) + 1
    while session.scalar(select(ModelVersion.id).where(ModelVersion.version == f"{scope}-v{n}")) is not None:
        n += 1
    return f"{scope}-v{n}"


def promote(session: Session, model_id: int, *, now: datetime | None = None) -> ModelVersion:
    """Make ``model_id`` the champion of its scope; the previous champion is retired and remembered for rollback."""
    model = session.get(ModelVersion, model_id, with_for_update={"of": ModelVersion})
    if model is None:
        raise NotFound(f"model {model_id} does not exist")
    now = now or utcnow()
    slot = champion_slot(session, model.task_id, model.tenant_id, lock=True)
    if slot is not None and slot.model_id == model.id:
        return model
    if slot is None:
        session.add(
            ChampionSlot(
                task_id=model.task_id,
                tenant_key=tenant_key(model.tenant_id),
                tenant_id=model.tenant_id,
                model_id=model.id,
                updated_at=now,
            )
        )
        model.replaced_id = None
    else:
        previous = session.get(ModelVersion, slot.model_id)
        if previous is not None:
            previous.status = "retired"
            previous.retired_at = now
        model.replaced_id = slot.model_id
        slot.model_id = model.id
        slot.updated_at = now
    model.status = "champion"
    model.promoted_at = now
    model.retired_at = None
    session.flush()
    return model


def rollback(session: Session, task_id: int, tenant_id: int | None, *, now: datetime | None = None) -> ModelVersion:
    """Restore the champion that the current one replaced; returns the model now serving the scope.

    A tenant variant with nothing before it is retired and the tenant falls back to the shared champion.
    """
    now = now or utcnow()
    slot = champion_slot(session, task_id, tenant_id, lock=True)
    if slot is None:
        raise NotFound("there is no champion to roll back in this scope")
    current = session.get(ModelVersion, slot.model_id)
    assert current is not None
    previous = session.get(ModelVersion, current.replaced_id) if current.replaced_id else None
    if previous is None:
        if tenant_id is None:
            raise Conflict(f"{current.version} replaced no earlier champion; there is nothing to roll back to")
        shared = champion_slot(session, task_id, None)
        if shared is None:
            raise Conflict(f"{current.version} replaced no earlier champion and the task has no shared model")
        current.status = "retired"
        current.retired_at = now
        session.delete(slot)
        session.flush()
        fallback = session.get(ModelVersion, shared.model_id)
        assert fallback is not None
        return fallback
    current.status = "retired"
    current.retired_at = now
    previous.status = "champion"
    previous.promoted_at = now
    previous.retired_at = None
    slot.model_id = previous.id
    slot.updated_at = now
    session.flush()
    return previous


def ensure_zero_shot(session: Session, task: Task, settings: Settings | None = None) -> ModelVersion:
    """The task's zero-shot model (label-name embeddings), created and made champion if the task has none.

    Cheap (no model is loaded here): the zero-shot classifier is deterministic from the task's labels, descriptions
    and base model, so it is built where it is first needed (serving or the gate). Safe to call twice.
    """
    existing = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.task_id == task.id, ModelVersion.tenant_id.is_(None), ModelVersion.rung == "zero_shot")
        .order_by(ModelVersion.id)
    ).first()
    base = task.base_model or (settings.base_model if settings else "") or None
    if existing is None:
        session.flush()  # the task needs its id
        existing = ModelVersion(
            task_id=task.id,
            tenant_id=None,
            version=version_name(session, task, None),
            rung="zero_shot",
            status="candidate",
            metrics={},
            lineage={"n_train": 0, "tenants": {}, "note": "label names and descriptions only"},
            artifact_path=None,
            base_model=base,
        )
        session.add(existing)
        session.flush()
    if champion_slot(session, task.id, None) is None:
        promote(session, existing.id)
    return existing


# --- loading models to serve or evaluate -----------------------------------------------------------------------

_LOAD_LOCK = threading.Lock()


def load_model(model: ModelVersion, *, optimize: bool = False, default_base: str | None = None) -> Any:
    """The ``TextClassifier`` of a model version: from its artifact, or built for a zero-shot version without one.

    ``default_base``: the deployment's configured base model, for a zero-shot version that names none.
    """
    from flywheel.retrain import classifiers

    if artifacts.exists(model.artifact_path):
        assert model.artifact_path is not None
        return classifiers.load_classifier(artifacts.local_copy(model.artifact_path), optimize=optimize)
    if model.rung == "zero_shot":
        task = model.task
        return classifiers.build_zero_shot(
            list(task.labels),
            descriptions=dict(task.label_descriptions or {}) or None,
            base_model=model.base_model or task.base_model or default_base or None,
        )
    raise FileNotFoundError(f"the artifact of {model.version} is missing: {model.artifact_path}")


class ModelCache:
    """Per-process cache of loaded champions; a changed slot (id or updated_at) reloads on the next request."""

    def __init__(self, *, optimize: bool = False, default_base: str | None = None) -> None:
        self.optimize = optimize
        self.default_base = default_base
        self._models: dict[int, Any] = {}  # model id -> classifier
        self._lock = threading.Lock()

    def get(self, model: ModelVersion) -> Any:
        with self._lock:
            clf = self._models.get(model.id)
        if clf is not None:
            return clf
        with _LOAD_LOCK:
            clf = self._models.get(model.id)
            if clf is None:
                clf = load_model(model, optimize=self.optimize, default_base=self.default_base)
                with self._lock:
                    self._models[model.id] = clf
        return clf

    def keep_only(self, model_ids: set[int]) -> None:
        with self._lock:
            for mid in list(self._models):
                if mid not in model_ids:
                    del self._models[mid]
