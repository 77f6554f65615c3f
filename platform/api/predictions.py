"""Predictions and feedback: what product backends log (API.md, "Predictions" and "Feedback")."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from flask import Blueprint, Response, current_app, request
from prometheus_client import Counter
from sqlalchemy import Connection, and_, or_, select, true
from sqlalchemy.orm import Session

from flywheel.core import metrics
from flywheel.core.errors import NotFound, PayloadTooLarge, Unprocessable
from flywheel.domain import partitions
from flywheel.domain.auth import Principal
from flywheel.domain.ingest import IngestResult as IngestStored
from flywheel.domain.ingest import ingest_feedback, ingest_predictions
from flywheel.domain.schemas import (
    CURSOR_PATTERN,
    MAX_ID,
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
    query: TenantQuery,
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
    tenant_id = principal.tenant_id_for(db, query.tenant)
    result = store(db, tenant_id, parsed.items, batch=parsed)
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
    query=TenantQuery,
    documented_body=(PredictionBatch, PredictionIn),
    responses={201: IngestResult, 200: IngestResult},
    errors=(409,),
)
def post_predictions(*, principal: Principal, query: TenantQuery) -> Response:
    """Atomic and idempotent on each item's ``id``: a replayed batch answers 200 and stores nothing. The body is a
    batch (``{"predictions": [...]}``) or one bare item."""
    return _ingest(
        principal,
        get_connection(),  # Core only: no ORM session on the hottest path
        query,
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
    query=TenantQuery,
    documented_body=(FeedbackBatch, FeedbackIn),
    responses={201: IngestResult, 200: IngestResult},
    errors=(409,),
)
def post_feedback(*, principal: Principal, query: TenantQuery) -> Response:
    """Every item is kept (never overwritten); the effective label of each touched prediction is re-derived. The
    body is a batch (``{"feedback": [...]}``) or one bare item."""
    return _ingest(
        principal,
        get_session(),
        query,
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
    row = session.scalar(select(Prediction).where(partitions.by_client_ids(session, tenant.id, [prediction_id])))
    if row is None:
        raise NotFound(f"prediction '{prediction_id}' does not exist")
    return json_response(predictions_out(session, [row])[0])


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(CURSOR_PATTERN)
_FIRST = datetime.min.replace(tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)


def _encode_cursor(created_at: datetime, pk: int) -> str:
    """``<microseconds since the epoch>.<row id>``: a position in the list, newest first."""
    return f"{(created_at - EPOCH) // timedelta(microseconds=1)}.{pk}"


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Every string of the documented form is a position: one beyond the years 1-9999 is the list's end or start."""
    if not _CURSOR.fullmatch(cursor):  # (the query schema checks it; this keeps the function safe on its own)
        raise Unprocessable("invalid cursor", errors=[{"loc": ["query", "cursor"], "msg": "not a cursor"}])
    micros, pk = cursor.split(".")
    try:
        at = EPOCH + timedelta(microseconds=int(micros))
    except OverflowError:
        at = _FIRST if micros.startswith("-") else _LAST
    return at, int(pk)


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
        before_pk = Prediction.id < pk if pk <= MAX_ID else true()  # (an id past the column's range: all are before)
        stmt = stmt.where(or_(Prediction.created_at < at, and_(Prediction.created_at == at, before_pk)))
    rows = list(
        session.scalars(stmt.order_by(Prediction.created_at.desc(), Prediction.id.desc()).limit(query.limit + 1))
    )
    next_cursor = (
        _encode_cursor(rows[query.limit - 1].created_at, rows[query.limit - 1].id) if len(rows) > query.limit else None
    )
    return json_response(PredictionPage(items=predictions_out(session, rows[: query.limit]), next_cursor=next_cursor))
