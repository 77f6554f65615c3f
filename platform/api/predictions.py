"""Predictions and feedback: what product backends log (API.md, "Predictions" and "Feedback")."""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from datetime import datetime

from flask import Blueprint, Response, current_app, request
from prometheus_client import Counter
from sqlalchemy import Connection, and_, or_, select
from sqlalchemy.orm import Session

from flywheel.core import metrics
from flywheel.core.errors import BadRequest, NotFound, PayloadTooLarge
from flywheel.domain.auth import Principal
from flywheel.domain.ingest import IngestResult as IngestStored
from flywheel.domain.ingest import ingest_feedback, ingest_predictions
from flywheel.domain.schemas import (
    FeedbackBatch,
    FeedbackIn,
    IngestResult,
    PredictionBatch,
    PredictionIn,
    PredictionOut,
    PredictionPage,
    PredictionQuery,
    TenantQuery,
)
from flywheel.models.records import Prediction, Task
from flywheel.web.context import get_connection, get_session, get_tasks
from flywheel.web.serializers import predictions_out
from flywheel.web.spec import json_response, operation, parse_batch

bp = Blueprint("predictions", __name__, url_prefix="/v1")


def _ingest(
    principal: Principal,
    db: Connection | Session,
    *,
    root: str,
    item: type[PredictionIn] | type[FeedbackIn],
    batch: type[PredictionBatch] | type[FeedbackBatch],
    store: Callable[..., IngestStored],
    stored: Counter,
) -> Response:
    """Parse, check the size, store atomically, commit: 201 when anything was stored, 200 for a pure replay."""
    parsed = parse_batch(request.get_data(cache=False), root=root, item=item, batch=batch)
    limit = current_app.config["FLYWHEEL_MAX_BATCH_ITEMS"]
    if parsed.size > limit:
        raise PayloadTooLarge(f"{parsed.size} {root} items in one request; the limit is {limit}")
    result = store(db, principal.own_tenant_id(), parsed.items, batch=parsed)
    db.commit()
    stored.inc(result.accepted)
    body = IngestResult(accepted=result.accepted, duplicates=result.duplicates)
    return json_response(body, 201 if result.accepted else 200)


@operation(
    bp,
    "POST",
    "/predictions",
    summary="Log predictions (one object or a batch of up to 1,000)",
    scope="ingest",
    documented_body=PredictionBatch,
    responses={201: IngestResult, 200: IngestResult},
)
def post_predictions(*, principal: Principal) -> Response:
    """Atomic and idempotent on each item's ``id``: a replayed batch answers 200 and stores nothing."""
    return _ingest(
        principal,
        get_connection(),  # Core only: no ORM session on the hottest path
        root="predictions",
        item=PredictionIn,
        batch=PredictionBatch,
        store=functools.partial(ingest_predictions, tasks=get_tasks()),
        stored=metrics.PREDICTIONS_INGESTED,
    )


@operation(
    bp,
    "POST",
    "/feedback",
    summary="Log user feedback on predictions",
    scope="ingest",
    documented_body=FeedbackBatch,
    responses={201: IngestResult, 200: IngestResult},
)
def post_feedback(*, principal: Principal) -> Response:
    """Every item is kept (never overwritten); the effective label of each touched prediction is re-derived."""
    return _ingest(
        principal,
        get_session(),
        root="feedback",
        item=FeedbackIn,
        batch=FeedbackBatch,
        store=ingest_feedback,
        stored=metrics.FEEDBACK_INGESTED,
    )


@operation(
    bp,
    "GET",
    "/predictions/<prediction_id>",
    summary="Get a prediction with its feedback",
    scope="read",
    query=TenantQuery,
    responses={200: PredictionOut},
)
def get_prediction(prediction_id: str, *, principal: Principal, query: TenantQuery) -> Response:
    session = get_session()
    tenant = principal.tenant_for(session, query.tenant)
    row = session.scalar(
        select(Prediction).where(Prediction.tenant_id == tenant.id, Prediction.client_id == prediction_id)
    )
    if row is None:
        raise NotFound(f"prediction '{prediction_id}' does not exist")
    return json_response(predictions_out(session, [row])[0])


def _encode_cursor(created_at: datetime, pk: int) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{pk}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        stamp, pk = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(stamp), int(pk)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the cursor is not one this API returned") from None


@operation(
    bp,
    "GET",
    "/predictions",
    summary="List predictions, newest first (cursor pagination)",
    scope="read",
    query=PredictionQuery,
    responses={200: PredictionPage},
)
def list_predictions(*, principal: Principal, query: PredictionQuery) -> Response:
    session = get_session()
    tenant = principal.tenant_for(session, query.tenant)
    stmt = select(Prediction).where(Prediction.tenant_id == tenant.id)
    if query.task is not None:
        task_id = session.scalar(select(Task.id).where(Task.name == query.task))
        if task_id is None:
            raise NotFound(f"task '{query.task}' does not exist")
        stmt = stmt.where(Prediction.task_id == task_id)
    if query.since is not None:
        stmt = stmt.where(Prediction.created_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(Prediction.created_at < query.until)
    if query.has_feedback is not None:
        stmt = stmt.where(Prediction.feedback_count > 0 if query.has_feedback else Prediction.feedback_count == 0)
    if query.cursor:
        at, pk = _decode_cursor(query.cursor)
        stmt = stmt.where(or_(Prediction.created_at < at, and_(Prediction.created_at == at, Prediction.id < pk)))
    rows = list(
        session.scalars(stmt.order_by(Prediction.created_at.desc(), Prediction.id.desc()).limit(query.limit + 1))
    )
    next_cursor = (
        _encode_cursor(rows[query.limit - 1].created_at, rows[query.limit - 1].id) if len(rows) > query.limit else None
    )
    return json_response(PredictionPage(items=predictions_out(session, rows[: query.limit]), next_cursor=next_cursor))
