"""Ingestion services: batches of predictions and feedback, atomic and idempotent on the client id.

Services take the session (or, on the hot path, the connection) first and never commit; the caller (a view, the
serving path, a job) owns the transaction. One exception: a single row with no transaction open is its own
transaction (``driver_execute(alone=True)``); there is nothing else for it to be atomic with.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_json
from sqlalchemy import JSON, Connection, Table, bindparam, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from flywheel.core.db import UTCDateTime, connection_of, driver_execute, utcnow
from flywheel.core.errors import Conflict, Unprocessable
from flywheel.domain import labeling_rules, partitions
from flywheel.domain.effective import apply_rule
from flywheel.domain.holdout import holdout_bucket
from flywheel.domain.schemas import FeedbackIn, PredictionIn
from flywheel.models.label_quality import LabelingRule
from flywheel.models.records import Feedback, Prediction, Task

PROBABILITY_SUM_TOLERANCE = 1e-3
CONFIDENCE_TOLERANCE = 1e-6


@dataclass
class Batch:
    """A parsed batch: the valid items with their original indexes, and the schema errors of the others."""

    items: list[Any]
    indexes: list[int]
    errors: list[dict[str, Any]]
    size: int


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


def content_hash(item: PredictionIn | FeedbackIn) -> str:
    """The idempotency fingerprint: what the client sent, unset fields excluded so that a retry matches.

    pydantic serializes fields in declaration order and values canonically (datetimes normalized), so equal
    content gives equal bytes; dict keys (metadata, probabilities) keep the order the client sent them in.
    """
    return hashlib.sha256(item.model_dump_json(exclude_unset=True).encode()).hexdigest()


@functools.cache
def _converted_columns(table: Table, dialect: str) -> tuple[list[str], list[str]]:
    """The JSON columns, and the datetime columns that need formatting (SQLite only)."""
    json_cols = [c.name for c in table.columns if isinstance(c.type, JSON)]
    time_cols = [c.name for c in table.columns if isinstance(c.type, UTCDateTime)] if dialect == "sqlite" else []
    return json_cols, time_cols


def _to_db(table: Table, rows: list[dict[str, Any]], dialect: str) -> list[dict[str, Any]]:
    """Serialize JSON columns and datetimes the way the column types would: bulk rows go to the driver as they are,
    without SQLAlchemy's per-value type processing (a third of a 1,000-row batch's time, measured)."""
    json_cols, time_cols = _converted_columns(table, dialect)
    stamps: dict[datetime, str] = {}  # batches share a few timestamps; format each once
    for row in rows:
        for name in json_cols:
            if row[name] is not None:
                row[name] = to_json(row[name]).decode()  # pydantic's encoder: 5x json.dumps on these small dicts
        for name in time_cols:  # SQLAlchemy's SQLite storage format: naive UTC, "%Y-%m-%d %H:%M:%S.%f"
            value = row[name]
            if value not in stamps:
                stamps[value] = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
            row[name] = stamps[value]
    return rows


@functools.cache
def _columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.name != "id"]


@functools.cache
def _sqlite_sql(table: Table) -> str:
    names = _columns(table)
    return (
        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
        "ON CONFLICT (tenant_id, client_id) DO NOTHING"
    )


@functools.cache
def _row_sql(table: Table, keyed: bool) -> str:
    """One row, PostgreSQL: a plain ``INSERT … VALUES`` with one placeholder per column. For a single item it costs
    psycopg less than building sixteen one-element arrays (measured)."""
    names = ", ".join(f'"{name}"' for name in _columns(table))
    if keyed:
        dialect = postgresql.dialect()
        typed = [c for c in table.columns if c.name != "id"]
        values = ", ".join(f"%s::{c.type.compile(dialect=dialect).lower()}" for c in typed)
        return _keyed_sql(table, f"SELECT * FROM (VALUES ({values})) AS v ({names})")
    values = ", ".join(["%s"] * len(_columns(table)))
    return f"INSERT INTO {table.name} ({names}) VALUES ({values}) ON CONFLICT (tenant_id, client_id) DO NOTHING"


@functools.cache
def _unnest_sql(table: Table, keyed: bool) -> str:
    """``INSERT … SELECT * FROM unnest(array per column)``: one statement with one parameter per column.

    A multi-row VALUES statement has one placeholder per value (16,000 for 1,000 predictions), and psycopg parses
    that query text anew on every call: 60% of a batch's time, measured. Arrays keep the statement small and fixed.
    They travel in binary (``%(name)b``): psycopg's text format quotes every element with a regex, which took
    half of a batch's time, measured.
    """
    dialect = postgresql.dialect()
    cols = [c for c in table.columns if c.name != "id"]
    casts = [
        f"%({c.name})b::{'json' if isinstance(c.type, JSON) else c.type.compile(dialect=dialect).lower()}[]"
        for c in cols
    ]
    names = ", ".join(f'"{c.name}"' for c in cols)
    if keyed:
        return _keyed_sql(table, f"SELECT * FROM unnest({', '.join(casts)}) AS u ({names})")
    return (
        f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({', '.join(casts)}) "
        "ON CONFLICT (tenant_id, client_id) DO NOTHING"
    )


def _keyed_sql(table: Table, rows_sql: str) -> str:
    """PostgreSQL's predictions and feedback: the idempotency key goes to the table's key table (``prediction_keys``,
    ``feedback_keys``: the partitioned table cannot hold it unique), and a row is inserted only when its key was
    new, in one statement. ``rows_sql`` selects the rows with the table's column names."""
    layout = partitions.LAYOUTS[table.name]
    names = [f'"{c}"' for c in _columns(table)]
    return (
        f"WITH incoming AS ({rows_sql}), "
        f"keys AS (INSERT INTO {layout.keys.name} (tenant_id, client_id, {layout.row_id}, {layout.column}) "
        f"SELECT tenant_id, client_id, nextval('{layout.sequence}'), {layout.column} FROM incoming "
        f"ON CONFLICT DO NOTHING RETURNING tenant_id, client_id, {layout.row_id}) "
        f"INSERT INTO {layout.table} (id, {', '.join(names)}) "
        f"SELECT keys.{layout.row_id}, {', '.join('incoming.' + n for n in names)} "
        "FROM incoming JOIN keys USING (tenant_id, client_id)"
    )


def _insert_ignoring_conflicts(db: Connection | Session, table: Table, rows: list[dict[str, Any]]) -> int:
    """INSERT … ON CONFLICT (tenant_id, client_id) DO NOTHING, straight to the driver; returns how many rows were
    inserted. SQLite: ``executemany`` of one prepared statement (what the raw-SQL baseline does); PostgreSQL: one
    statement over arrays. A single row: a plain ``VALUES``, run as its own transaction when the caller has none open
    (``driver_execute(alone=True)``)."""
    dialect = connection_of(db).dialect.name
    rows = _to_db(table, rows, dialect)
    keyed = dialect == "postgresql" and table.name in partitions.LAYOUTS and partitions.keys_apart(db)
    if len(rows) == 1:  # one row is atomic on its own: when the caller has no transaction open, no BEGIN or COMMIT
        sql = _row_sql(table, keyed) if dialect == "postgresql" else _sqlite_sql(table)
        return int(driver_execute(db, sql, [rows[0][name] for name in _columns(table)], alone=True).rowcount)
    if dialect == "postgresql":
        columns = {name: [row[name] for row in rows] for name in _columns(table)}
        return int(driver_execute(db, _unnest_sql(table, keyed), columns).rowcount)
    values = operator.itemgetter(*_columns(table))
    return int(driver_execute(db, _sqlite_sql(table), [values(row) for row in rows], many=True).rowcount)


def _check_probabilities(item: PredictionIn, labels: frozenset[str]) -> list[tuple[str, str]]:
    """Problems as (field, message) pairs."""
    problems: list[tuple[str, str]] = []
    probs = item.probabilities
    if probs is None:
        return problems
    unknown = sorted(set(probs) - labels)
    if unknown:
        problems.append(("probabilities", f"not labels of task '{item.task}': {', '.join(map(repr, unknown))}"))
        return problems
    total = math.fsum(probs.values())
    if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
        problems.append(("probabilities", f"values must sum to 1 (within 1e-3); they sum to {total:.6f}"))
    if item.label in probs:
        top = max(probs.values())
        if probs[item.label] < top:
            problems.append(("probabilities", f"label '{item.label}' must have the highest probability"))
        if abs(probs[item.label] - item.confidence) > CONFIDENCE_TOLERANCE:
            problems.append(("confidence", f"must equal probabilities['{item.label}'] ({probs[item.label]})"))
    else:
        problems.append(("probabilities", f"must include the predicted label '{item.label}'"))
    return problems


def _dedupe_batch(
    items: Sequence[PredictionIn | FeedbackIn], hashes: list[str], root: str, index: list[int]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Position of each id's first occurrence; an id repeated with different content in one batch is an error."""
    first: dict[str, int] = {}
    errors: list[dict[str, Any]] = []
    for pos, item in enumerate(items):
        j = first.setdefault(item.id, pos)
        if j != pos and hashes[j] != hashes[pos]:
            msg = f"id '{item.id}' appears earlier in this batch (index {index[j]}) with different content"
            errors.append({"loc": [root, index[pos], "id"], "msg": msg})
    return first, errors


def _store(
    db: Connection | Session,
    model: type[Prediction] | type[Feedback],
    tenant_id: int,
    rows: list[dict[str, Any]],
    noun: str,
) -> int:
    """Insert the rows, skipping ids already stored (replays, or a concurrent request's); returns how many were new.

    Any id stored with other content is a 409 for the whole batch, and the caller's transaction, not yet committed,
    stores nothing. Inserting first keeps the common case (all new) to one statement: the stored rows are read
    only when some were skipped."""
    table: Table = model.__table__  # type: ignore[assignment]
    hashes = {r["client_id"]: r["content_hash"] for r in rows}
    accepted = _insert_ignoring_conflicts(db, table, rows)
    if accepted < len(rows):
        ids = list(hashes)
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            where = partitions.by_client_ids(db, tenant_id, chunk, model)
            stored = db.execute(select(table.c.client_id, table.c.content_hash).where(where))
            _raise_on_changed(sorted(cid for cid, h in stored if hashes[cid] != h), noun)
    return accepted


def _raise_on_changed(changed: list[str], noun: str) -> None:
    if changed:
        shown = ", ".join(changed[:10]) + (" …" if len(changed) > 10 else "")
        raise Conflict(
            f"{len(changed)} {noun} id(s) already exist with different content: {shown}; nothing was stored",
            errors=[{"loc": ["id"], "msg": f"'{cid}' already exists with different content"} for cid in changed],
        )


def _raise_if_invalid(errors: list[dict[str, Any]], batch: Batch | None, n: int, noun: str) -> None:
    if batch is not None:
        errors = batch.errors + errors
    if errors:
        errors.sort(key=lambda e: e["loc"][1])
        bad = len({e["loc"][1] for e in errors})
        total = batch.size if batch is not None else n
        raise Unprocessable(f"{bad} of {total} {noun} are invalid; nothing was stored", errors=errors)


class TaskCatalog:
    """Tasks by name: ``(id, label set)``. A task is immutable once created (no endpoint or command changes or
    deletes one), so a process keeps what it has read and ingestion skips a query per request; a name not found
    is asked again next time, so a task created meanwhile is seen at once. Each app holds one."""

    _QUERY = select(Task.name, Task.id, Task.labels).where(Task.name.in_(bindparam("names", expanding=True)))

    #: How long the set of tasks with labeling rules is trusted. A rule set put through another process is seen
    #: by ingestion here within this time; the nightly back-fill votes on whatever arrived meanwhile.
    RULES_TTL_SECONDS = 30.0

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, frozenset[str]]] = {}
        self._with_rules: frozenset[int] = frozenset()
        self._rules_read_at: float | None = None

    def lookup(self, db: Connection | Session, names: set[str]) -> dict[str, tuple[int, frozenset[str]]]:
        missing = [name for name in names if name not in self._known]
        if missing:
            for name, pk, labels in db.execute(self._QUERY, {"names": missing}):
                self._known[name] = (pk, frozenset(labels))
            self._read_rules(db)  # while a query is being made anyway
        return {name: self._known[name] for name in names if name in self._known}

    def with_rules(self, db: Connection | Session, task_ids: set[int]) -> set[int]:
        """Which of these tasks have labeling rules (read again at most every ``RULES_TTL_SECONDS``): ingestion of
        a task without rules costs no query."""
        if self._rules_read_at is None or time.monotonic() - self._rules_read_at > self.RULES_TTL_SECONDS:
            self._read_rules(db)
        return task_ids & self._with_rules

    def forget_rules(self) -> None:
        """Read the tasks with rules again next time (this process changed a rule set)."""
        self._rules_read_at = None

    def _read_rules(self, db: Connection | Session) -> None:
        self._with_rules = frozenset(db.scalars(select(LabelingRule.task_id).distinct()))
        self._rules_read_at = time.monotonic()


def ingest_predictions(
    db: Connection | Session,
    tenant_id: int,
    items: Sequence[PredictionIn],
    *,
    batch: Batch | None = None,
    tasks: TaskCatalog | None = None,
) -> IngestResult:
    """Validate against the tasks, then store every item or none (422 lists every bad item by index).

    ``batch`` carries the items' original indexes and the schema errors of items that did not parse; ``tasks`` is
    the app's catalog (without one, the tasks are read from the database).
    """
    index = batch.indexes if batch is not None else list(range(len(items)))
    known = (tasks or TaskCatalog()).lookup(db, {item.task for item in items})
    hashes = [content_hash(item) for item in items]
    first, errors = _dedupe_batch(items, hashes, "predictions", index)
    for i, item in zip(index, items, strict=True):
        if item.task not in known:
            errors.append({"loc": ["predictions", i, "task"], "msg": f"task '{item.task}' does not exist"})
            continue
        labels = known[item.task][1]
        if item.label not in labels:
            errors.append(
                {"loc": ["predictions", i, "label"], "msg": f"'{item.label}' is not a label of task '{item.task}'"}
            )
        errors.extend({"loc": ["predictions", i, f], "msg": m} for f, m in _check_probabilities(item, labels))
    _raise_if_invalid(errors, batch, len(items), "predictions")

    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "tenant_id": tenant_id,
            "task_id": known[item.task][0],
            "client_id": item.id,
            "text": item.text,
            "label": item.label,
            "confidence": item.confidence,
            "probabilities": item.probabilities,
            "model_version": item.model_version,
            "in_sample": item.in_sample,
            "metadata": item.metadata,
            "created_at": item.created_at or now,
            "received_at": now,
            "content_hash": hashes[i],
            "bucket": holdout_bucket(item.id),
            "effective_label": None,
            "label_discarded": False,
            "feedback_count": 0,
        }
        for i, item in enumerate(items)
        if first[item.id] == i
    ]
    accepted = _store(db, Prediction, tenant_id, rows, "prediction")
    if accepted:
        _vote_by_rules(db, tenant_id, rows, tasks or TaskCatalog())
    return IngestResult(accepted=accepted, duplicates=len(items) - accepted)


def _vote_by_rules(db: Connection | Session, tenant_id: int, rows: list[dict[str, Any]], tasks: TaskCatalog) -> None:
    """New predictions of tasks with labeling rules get the rules' votes now (no query for tasks without)."""
    if not tasks.with_rules(db, {row["task_id"] for row in rows}):
        return
    ids = list(
        db.scalars(
            select(Prediction.id).where(partitions.by_client_ids(db, tenant_id, [row["client_id"] for row in rows]))
        )
    )
    labeling_rules.apply_rules(db, tenant_id, ids)


def ingest_feedback(
    session: Session, tenant_id: int, items: Sequence[FeedbackIn], *, batch: Batch | None = None
) -> IngestResult:
    """Store feedback atomically and idempotently, then re-derive the effective label of the touched predictions."""
    pred_ids = {item.prediction_id for item in items}
    preds = {
        cid: (pk, labels, name, created)
        for cid, pk, labels, name, created in session.execute(
            select(Prediction.client_id, Prediction.id, Task.labels, Task.name, Prediction.created_at)
            .join(Task, Task.id == Prediction.task_id)
            .where(partitions.by_client_ids(session, tenant_id, sorted(pred_ids)))
        )
    }
    hashes = [content_hash(item) for item in items]
    index = batch.indexes if batch is not None else list(range(len(items)))
    first, errors = _dedupe_batch(items, hashes, "feedback", index)
    for i, item in zip(index, items, strict=True):
        found = preds.get(item.prediction_id)
        if found is None:
            msg = f"prediction '{item.prediction_id}' does not exist"
            errors.append({"loc": ["feedback", i, "prediction_id"], "msg": msg})
        elif item.label not in found[1]:
            errors.append(
                {"loc": ["feedback", i, "label"], "msg": f"'{item.label}' is not a label of task '{found[2]}'"}
            )
    _raise_if_invalid(errors, batch, len(items), "feedback items")

    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "tenant_id": tenant_id,
            "prediction_id": preds[item.prediction_id][0],
            "prediction_created_at": preds[item.prediction_id][3],  # the partition key: its prediction's month
            "client_id": item.id,
            "label": item.label,
            "source": item.source,
            "source_id": item.source_id,
            "decision": None,
            "note": None,
            "created_at": item.created_at or now,
            "received_at": now,
            "content_hash": hashes[i],
        }
        for i, item in enumerate(items)
        if first[item.id] == i
    ]
    accepted = _store(session, Feedback, tenant_id, rows, "feedback")
    if accepted:
        apply_rule(session, sorted({(preds[i.prediction_id][0], preds[i.prediction_id][3]) for i in items}))
    return IngestResult(accepted=accepted, duplicates=len(items) - accepted)


def record_feedback(
    session: Session,
    prediction: Prediction,
    *,
    client_id: str,
    label: str | None,
    source: str,
    source_id: str | None,
    decision: str | None = None,
    note: str | None = None,
    created_at: datetime | None = None,
) -> Feedback:
    """Store one feedback row (used for reviewer decisions, which may carry no label) and re-derive the label."""

    now = utcnow()
    payload = {"label": label, "source": source, "source_id": source_id, "decision": decision, "note": note}
    row = Feedback(
        tenant_id=prediction.tenant_id,
        prediction_id=prediction.id,
        prediction_created_at=prediction.created_at,
        client_id=client_id,
        created_at=created_at or now,
        received_at=now,
        content_hash=hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest(),
        **payload,
    )
    session.add(row)
    session.flush()
    partitions.claim_keys(session, Feedback, [(row.tenant_id, row.client_id, row.id, row.prediction_created_at)])
    apply_rule(session, [(prediction.id, prediction.created_at)])
    return row
