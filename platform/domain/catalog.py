"""Tasks: creating one (its label set is fixed for life). The caller registers its zero-shot model."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flywheel.core.errors import Conflict, Unprocessable
from flywheel.domain.schemas import TaskIn
from flywheel.models.records import Task


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
    try:
        with session.begin_nested():  # a concurrent create of the same name passed the check above too
            session.add(task)
    except IntegrityError:
        raise Conflict(f"task '{spec.name}' already exists") from None
    return task
