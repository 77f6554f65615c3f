"""Tasks: a classification problem with a fixed label set, shared by the tenants that use it."""

from __future__ import annotations

from flask import Blueprint, Response
from sqlalchemy import select

from flywheel.core.errors import NotFound
from flywheel.domain.auth import Principal
from flywheel.domain.catalog import create_task
from flywheel.domain.schemas import TaskIn, TaskList, TaskOut
from flywheel.models.records import Task
from flywheel.retrain.registry import ensure_zero_shot
from flywheel.web.context import get_session
from flywheel.web.serializers import task_out
from flywheel.web.spec import json_response, operation

bp = Blueprint("tasks", __name__, url_prefix="/v1")


@operation(bp, "POST", "/tasks", summary="Create a task", scope="admin", body=TaskIn, responses={201: TaskOut},
           errors=(409,))  # fmt: skip
def post_task(*, principal: Principal, body: TaskIn) -> Response:
    session = get_session()
    task = create_task(session, body)
    ensure_zero_shot(session, task)  # day one: the zero-shot model serves until feedback trains a better one
    out = task_out(task)
    session.commit()
    return json_response(out, 201)


@operation(bp, "GET", "/tasks", summary="List tasks", scope="read", responses={200: TaskList})
def list_tasks(*, principal: Principal) -> Response:
    tasks = get_session().scalars(select(Task).order_by(Task.name))
    return json_response(TaskList(items=[task_out(t) for t in tasks]))


@operation(bp, "GET", "/tasks/<name>", summary="Get a task", scope="read", responses={200: TaskOut})
def get_task(name: str, *, principal: Principal) -> Response:
    task = get_session().scalar(select(Task).where(Task.name == name))
    if task is None:
        raise NotFound(f"task '{name}' does not exist")
    return json_response(task_out(task))
