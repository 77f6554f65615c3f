"""Model versions and training runs as callers see them, for the API and the dashboard alike.

A tenant key sees the shared models and its own variants, with per-tenant metrics, lineage and reasons reduced to
its own tenant; an admin sees everything. Both edges serialize through here, so the rule has one home.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.domain.auth import Principal
from flywheel.models.training import ModelVersion, TrainingRun

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
    tainted: bool = Field(
        default=False, description="a record it trained on was erased (or its tenant stopped sharing its labels)"
    )
    tainted_rows: int = Field(default=0, description="how many of the rows that trained it are gone")


class PairedOut(BaseModel):
    """Candidate minus champion on the same holdout items, with its bootstrap 95% interval."""

    metric: str
    difference: float
    ci_low: float
    ci_high: float
    n: int


class PairedComparisonOut(PairedOut):
    """The paired comparison overall, and the same per tenant (a tenant key sees its own)."""

    tenants: dict[str, PairedOut] = Field(default_factory=dict)


class CandidateOut(BaseModel):
    """One candidate a run trained: its holdout value of the gate's metric, what the gate said of it, and its
    paired comparison with the champion."""

    rung: str
    head: str | None = Field(default=None, description="the rung, or the kind of few-shot head (knn)")
    value: float | None
    verdict: Literal["promoted", "rejected"]
    chosen: bool
    paired: PairedComparisonOut | None


class RunDecision(BaseModel):
    """The gate's decision on a finished run: ``outcome``, the chosen candidate's paired comparison with the
    champion (null without a champion or for a skipped run) and every candidate."""

    outcome: Literal["promoted", "rejected", "skipped"]
    paired: PairedComparisonOut | None = None
    candidates: list[CandidateOut] = Field(default_factory=list)


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
    decision: RunDecision | None
    reasons: list[str]
    model_id: int | None
    model_version: str | None
    lineage: dict[str, Any]
    error: str | None
    worker: str | None = Field(description="host:pid of the process that runs (or ran) the job")
    attempts: int = Field(description="how many times a process claimed the run (a dead worker's run is re-queued)")
    queue: str | None = Field(description="the worker queue it was last sent to (cpu | gpu); null in-process")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


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
        tainted=m.tainted,
        tainted_rows=m.tainted_rows or 0,
    )


def run_out(session: Session, principal: Principal, r: TrainingRun) -> TrainingRunOut:
    version = session.scalar(select(ModelVersion.version).where(ModelVersion.id == r.model_id)) if r.model_id else None
    reasons = list(r.reasons or [])
    if not principal.is_admin:  # reasons name tenants ("tenant acme: ..."): keep the caller's own and the rest
        reasons = [
            x for x in reasons if not x.startswith("tenant ") or x.startswith(f"tenant {principal.tenant_slug}:")
        ]
    metrics = dict(r.metrics or {})
    record = metrics.pop("gate", None) or {}
    decision = RunDecision(outcome=r.decision, **_scoped(principal, record)) if r.decision else None  # type: ignore[arg-type]
    return TrainingRunOut(
        id=r.id,
        task=r.task.name,
        tenant=r.tenant.slug if r.tenant else None,
        status=r.status,  # type: ignore[arg-type]
        trigger=r.trigger,
        rung=r.rung,
        progress=r.progress,
        message=r.message,
        metrics=_scoped(principal, metrics),
        decision=decision,
        reasons=reasons,
        model_id=r.model_id,
        model_version=version,
        lineage=_scoped(principal, r.lineage or {}),
        error=r.error if principal.is_admin else (None if r.error is None else "the run failed"),
        worker=f"{r.host}:{r.pid}" if r.host and r.pid else None,
        attempts=r.attempts or 0,
        queue=r.queue,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )
