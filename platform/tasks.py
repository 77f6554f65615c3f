"""Task services."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.api.schemas import TaskIn
from flywheel.errors import Conflict, Unprocessable
from flywheel.models.core import Task


def create_task(session: Session, spec: TaskIn) -> Task:
    """Create a task. Unknown labels in ``label_descriptions`` are an error; names are unique."""
    unknown = sorted(set(spec.label_descriptions) - set(spec.labels))
    if unknown:
        raise Unprocessable(
            "label_descriptions names labels the task does not have",
            errors=[{"loc": ["label_descriptions", k], "msg": "not one of the task's labels"} for k in unknown],
        )
    if session.scalar(select(Task.id).where(Task.name == spec.name)) is not None:
        raise Conflict(f"task '{spec.name}' already exists")
    task = Task(
        name=spec.name,
        labels=list(spec.labels),
        description=spec.description,
        label_descriptions=dict(spec.label_descriptions),
        base_model=spec.base_model,
    )
    session.add(task)
    session.flush()
    from flywheel.retrain.registry import ensure_zero_shot

    ensure_zero_shot(session, task)  # day one: the zero-shot model serves until feedback trains a better one
    return task
