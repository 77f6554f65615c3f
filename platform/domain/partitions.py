"""Monthly time partitions of the predictions table on PostgreSQL.

At a hundred million rows a single predictions table makes retention a long ``DELETE`` that bloats the table and
its indexes, and every index grows with all of history. On PostgreSQL the table is therefore declaratively
partitioned by ``created_at``, one partition per calendar month (UTC), plus a default partition that catches rows
dated outside every month created so far (a back-fill of old traffic). Retention drops whole months. Every hot
query filters on the tenant first and keeps its index, which each partition carries; a ``created_at`` window
(the SLA pass, the dashboard, drift) reads only the months it spans.

A unique constraint on a partitioned table must include the partition key, so the client's idempotency key
``(tenant_id, client_id)`` cannot be unique on the table itself. It lives in ``prediction_keys``, an unpartitioned
table of that key and the prediction's id: ingest inserts the key first (``ON CONFLICT DO NOTHING``) and the
prediction only when its key was new, in one statement. For the same reason nothing holds a foreign key to
``predictions.id`` there: erasure and retention delete the rows that point at a prediction themselves.

SQLite, the embedded default, keeps one unpartitioned table with the unique constraint, and none of this applies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    select,
    text,
    tuple_,
)
from sqlalchemy.orm import Session

from flywheel.models.records import Prediction

log = logging.getLogger(__name__)

TABLE = "predictions"
KEYS_TABLE = "prediction_keys"
DEFAULT_PARTITION = "predictions_default"
# Tables that point at a prediction by id without a foreign key (there can be none to a partitioned table's id).
REFERRING = (
    ("feedback", "prediction_id"),
    ("label_quality_results", "prediction_id"),
    ("model_training_rows", "prediction_id"),
)
# The key table, PostgreSQL only (not among the models, which describe the schema both databases share).
KEYS = Table(
    KEYS_TABLE,
    MetaData(),
    Column("tenant_id", Integer, primary_key=True),
    Column("client_id", String(128), primary_key=True),
    Column("prediction_id", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
# What differs on PostgreSQL from the models (which describe the SQLite schema): the schema check skips these.
PG_ABSENT_CONSTRAINTS = frozenset(
    {
        "uq_predictions_tenant_id_client_id",
        "fk_feedback_prediction_id_predictions",
        "fk_label_quality_results_prediction_id_predictions",
        "fk_model_training_rows_prediction_id_predictions",
    }
)


@dataclass(frozen=True)
class Partition:
    """One month's partition: rows with ``start <= created_at < end``."""

    name: str
    start: datetime
    end: datetime


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of the month holding ``moment``."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def add_months(month: datetime, n: int) -> datetime:
    index = month.year * 12 + month.month - 1 + n
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    return f"{TABLE}_y{month.year:04d}m{month.month:02d}"


def _conn(db: Connection | Session) -> Connection:
    return db.connection() if isinstance(db, Session) else db


def is_partitioned(db: Connection | Session) -> bool:
    """True on a PostgreSQL database whose predictions table is partitioned (every one at the latest revision)."""
    conn = _conn(db)
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": TABLE}).scalar()
    return kind == "p"


def keys_apart(db: Connection | Session) -> bool:
    """Whether ingest must keep the idempotency keys in ``prediction_keys`` (a partitioned PostgreSQL table), read
    once per pooled database connection. The catalog read leaves no transaction open behind it: a single-item
    ingest that runs as its own transaction (no BEGIN) stays one."""
    conn = _conn(db)
    info = conn.connection.info
    if "flywheel_keys_apart" not in info:
        kind = None
        if conn.dialect.name == "postgresql":
            dbapi: Any = conn.connection.dbapi_connection
            with dbapi.cursor() as cursor:
                cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (TABLE,))
                row = cursor.fetchone()
            if not conn.in_transaction():
                dbapi.rollback()
            kind = row[0] if row else None
        info["flywheel_keys_apart"] = kind == "p"
    return bool(info["flywheel_keys_apart"])


def by_client_ids(db: Connection | Session, tenant_id: int, client_ids: list[str]) -> ColumnElement[bool]:
    """The condition selecting a tenant's predictions by the client's ids, index-backed on either layout.

    Partitioned, the ids are found in ``prediction_keys`` (its primary key), which also holds each prediction's
    ``created_at``: the lookup then reads one partition's primary key per id. Unpartitioned, the table's own
    unique key serves."""
    if keys_apart(db):
        found = select(KEYS.c.prediction_id, KEYS.c.created_at).where(
            KEYS.c.tenant_id == tenant_id, KEYS.c.client_id.in_(client_ids)
        )
        return tuple_(Prediction.id, Prediction.created_at).in_(found)
    return (Prediction.tenant_id == tenant_id) & Prediction.client_id.in_(client_ids)


def register_keys(db: Connection | Session) -> int:
    """Give every prediction written around ingest (a bulk import with ``COPY``, seeded test data) its idempotency
    key; returns how many were missing. A no-op where the key is the table's own unique constraint (SQLite)."""
    if not keys_apart(db):
        return 0
    return int(
        _conn(db)
        .execute(
            text(
                f"INSERT INTO {KEYS_TABLE} (tenant_id, client_id, prediction_id, created_at) "
                f"SELECT tenant_id, client_id, id, created_at FROM {TABLE} ON CONFLICT DO NOTHING"
            )
        )
        .rowcount
    )


def partitions(db: Connection | Session) -> list[Partition]:
    """The monthly partitions, oldest first (the default partition is not listed)."""
    rows = _conn(db).execute(
        text(
            "SELECT c.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": TABLE},
    )
    found = []
    for (name,) in rows:
        if name == DEFAULT_PARTITION:
            continue
        start = datetime.strptime(name[-8:], "y%Ym%m").replace(tzinfo=UTC)  # predictions_yYYYYmMM
        found.append(Partition(name=name, start=start, end=add_months(start, 1)))
    return sorted(found, key=lambda p: p.start)


def create_month(db: Connection | Session, month: datetime) -> bool:
    """Create the partition of ``month`` unless it exists; returns True when created.

    Rows of that month already sitting in the default partition are moved into it first (PostgreSQL refuses to
    attach a range that the default partition holds rows of), all in the caller's transaction.
    """
    conn = _conn(db)
    month = month_start(month)
    name = partition_name(month)
    if conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
        return False
    bounds = {"lo": month, "hi": add_months(month, 1)}
    conn.execute(text(f'CREATE TABLE "{name}" (LIKE {TABLE} INCLUDING DEFAULTS)'))
    moved = conn.execute(
        text(
            f'WITH moved AS (DELETE FROM "{DEFAULT_PARTITION}" WHERE created_at >= :lo AND created_at < :hi '
            f'RETURNING *) INSERT INTO "{name}" SELECT * FROM moved'
        ),
        bounds,
    ).rowcount
    lo, hi = (v.isoformat() for v in bounds.values())
    conn.execute(text(f"ALTER TABLE {TABLE} ATTACH PARTITION \"{name}\" FOR VALUES FROM ('{lo}') TO ('{hi}')"))
    log.info("created partition %s (%d rows moved in from the default partition)", name, moved)
    return True


def ensure_partitions(db: Connection | Session, now: datetime, *, months_ahead: int = 3) -> list[str]:
    """Create this month's partition and the next ``months_ahead`` ones; returns the names created.

    Run daily by the scheduler, so a month's partition exists long before its first row arrives."""
    if not is_partitioned(db):
        return []
    first = month_start(now)
    months = [add_months(first, i) for i in range(months_ahead + 1)]
    return [partition_name(month) for month in months if create_month(db, month)]


@dataclass(frozen=True)
class Dropped:
    """What retention removed: whole partitions, and rows deleted one by one (from the default partition)."""

    partitions: list[str]
    predictions: int
    feedback: int


def expired(db: Connection | Session, cutoff: datetime) -> list[Partition]:
    """The monthly partitions that end on or before ``cutoff``, oldest first."""
    return [part for part in partitions(db) if part.end <= cutoff]


def drop_before(db: Connection | Session, cutoff: datetime) -> Dropped:
    """Drop every month that ends on or before ``cutoff``: the rows that point at its predictions and their
    idempotency keys are deleted, then the partition goes whole. Rows of the default partition are left to
    row-by-row retention (``flywheel.domain.erasure``)."""
    conn = _conn(db)
    gone: list[str] = []
    counts = {"predictions": 0, "feedback": 0}
    for part in expired(conn, cutoff):
        counts["feedback"] += _delete_referring(conn, f'SELECT id FROM "{part.name}"')
        conn.execute(
            text(
                f'DELETE FROM {KEYS_TABLE} k USING "{part.name}" p '
                "WHERE k.tenant_id = p.tenant_id AND k.client_id = p.client_id"
            )
        )
        counts["predictions"] += int(conn.execute(text(f'SELECT count(*) FROM "{part.name}"')).scalar_one())
        conn.execute(text(f'ALTER TABLE {TABLE} DETACH PARTITION "{part.name}"'))
        conn.execute(text(f'DROP TABLE "{part.name}"'))
        gone.append(part.name)
    if gone:
        log.info("retention dropped partitions %s", ", ".join(gone))
    return Dropped(partitions=gone, **counts)


def forget_keys(db: Connection | Session, tenant_id: int, client_ids: list[str]) -> None:
    """Remove the idempotency keys of erased predictions (their ids may be used again); a no-op on SQLite."""
    if client_ids and keys_apart(db):
        _conn(db).execute(KEYS.delete().where(KEYS.c.tenant_id == tenant_id, KEYS.c.client_id.in_(client_ids)))


def _delete_referring(conn: Connection, ids_sql: str, **params: object) -> int:
    """Delete the rows of every table that points at the predictions ``ids_sql`` selects; returns the feedback count."""
    feedback = 0
    for table, column in REFERRING:
        n = conn.execute(text(f"DELETE FROM {table} WHERE {column} IN ({ids_sql})"), params).rowcount
        feedback += n if table == "feedback" else 0
    return feedback


def include_in_schema_check(dialect: str) -> Callable[..., bool]:
    """An Alembic ``include_object`` hook that leaves out what partitioning changes on PostgreSQL (the partitions,
    the key table, the moved unique key and the dropped foreign keys), so that comparing the models with a
    database checks everything else."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if dialect != "postgresql" or name is None:
            return True
        if type_ == "table" and reflected and compare_to is None:
            return not (name == KEYS_TABLE or name.startswith(f"{TABLE}_"))
        return name not in PG_ABSENT_CONSTRAINTS

    return include
