"""Which model serves each (task, tenant): the champion slots, read by serving, monitoring and retraining alike.

A tenant's own variant serves it when one exists; otherwise the task's shared model does. Promotion and rollback
(which change the slots) live with the registry in ``flywheel.retrain``; this module only reads them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.models.training import ChampionSlot, ModelVersion


def tenant_key(tenant_id: int | None) -> int:
    return tenant_id or 0


def champion_slot(session: Session, task_id: int, tenant_id: int | None, *, lock: bool = False) -> ChampionSlot | None:
    stmt = select(ChampionSlot).where(ChampionSlot.task_id == task_id, ChampionSlot.tenant_key == tenant_key(tenant_id))
    if lock:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).first()


def champion_for(session: Session, task_id: int, tenant_id: int | None) -> ModelVersion | None:
    """The model that serves ``tenant_id`` on ``task_id``: the tenant's own variant first, then the shared one."""
    keys = [tenant_key(tenant_id), 0] if tenant_id else [0]
    rows = session.execute(
        select(ChampionSlot.tenant_key, ChampionSlot.model_id).where(
            ChampionSlot.task_id == task_id, ChampionSlot.tenant_key.in_(keys)
        )
    ).all()
    by_key = {k: m for k, m in rows}
    for k in keys:
        if k in by_key:
            return session.get(ModelVersion, by_key[k])
    return None


def serving_state(session: Session, task_id: int, tenant_id: int | None) -> tuple[int, datetime] | None:
    """``(model_id, updated_at)`` of the model serving this scope: one indexed query, cheap enough per request."""
    keys = [tenant_key(tenant_id), 0] if tenant_id else [0]
    rows = session.execute(
        select(ChampionSlot.tenant_key, ChampionSlot.model_id, ChampionSlot.updated_at).where(
            ChampionSlot.task_id == task_id, ChampionSlot.tenant_key.in_(keys)
        )
    ).all()
    by_key = {k: (m, u) for k, m, u in rows}
    for k in keys:
        if k in by_key:
            return by_key[k]
    return None
