"""Test helpers shared by the suite (imported as ``support``; conftest.py holds the fixtures)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from flywheel.core.db import Database
from flywheel.domain.auth import create_key
from flywheel.models.records import Task, Tenant
from flywheel.models.training import ModelVersion

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when this clone has none (a user's clone has no ../shared)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data not present ({path}): real-text tests need the project's shared data")
    return path


LABELS = ["card_arrival", "card_linking", "lost_or_stolen_card", "exchange_rate"]


@dataclass
class World:
    """Two tenants (acme, globex) on one task, with keys of every kind."""

    db: Database
    task: str
    labels: list[str]
    admin: str
    acme_ingest: str
    acme_read: str
    acme_rw: str
    globex_rw: str

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def key(self, tenant: str, scopes: list[str]) -> str:
        with self.db.session() as session:
            row = session.query(Tenant).filter_by(slug=tenant).one()
            return create_key(session, tenant=row, scopes=scopes)[1]


def prediction(pid: str, label: str = "card_arrival", **extra: Any) -> dict[str, Any]:
    """A valid prediction item for the `world` task."""
    others = [x for x in LABELS if x != label]
    item: dict[str, Any] = {
        "id": pid,
        "task": "intent",
        "text": f"text of {pid}: I am still waiting on my card",
        "label": label,
        "confidence": 0.7,
        "probabilities": {label: 0.7, others[0]: 0.2, others[1]: 0.1},
        "model_version": "v1",
        "created_at": "2026-11-27T01:00:00Z",
        "metadata": {"channel": "chat"},
    }
    item.update(extra)
    return item


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll a condition (a wait, not a timed assertion: the timeout only bounds a broken implementation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def register_served_model(
    db: Database, task: str, version: str, *, created_at: datetime, rung: str = "few_shot", tenant: str | None = None
) -> int:
    """Put ``version`` in the registry as one of our own served models of ``task`` (a champion of ``rung``; the
    shared model, or ``tenant``'s variant), created at ``created_at``; returns its id (for lineage rows)."""
    from sqlalchemy import select

    with db.session() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == task))
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == tenant)) if tenant else None
        model = ModelVersion(
            task_id=task_id,
            tenant_id=tenant_id,
            version=version,
            rung=rung,
            status="champion",
            metrics={},
            lineage={},
            created_at=created_at,
        )
        session.add(model)
        session.flush()
        return model.id
