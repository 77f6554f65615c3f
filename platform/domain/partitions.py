"""Monthly time partitions of the predictions and feedback tables on PostgreSQL.

At a hundred million rows a single predictions table makes retention a long ``DELETE`` that bloats the table and
its indexes, and every index grows with all of history. On PostgreSQL the table is therefore declaratively
partitioned by ``created_at``, one partition per calendar month (UTC), plus a default partition that catches rows
dated outside every month created so far (a back-fill of old traffic). Retention drops whole months. Every hot
query filters on the tenant first and keeps its index, which each partition carries; a ``created_at`` window
(the SLA pass, the dashboard, drift) reads only the months it spans.

The feedback table is partitioned the same way by its prediction's month: ``prediction_created_at``, a copy of
the prediction's ``created_at`` written with each feedback row. A month's predictions and their feedback sit in
partitions of the same month (``predictions_y2026m12``, ``feedback_y2026m12``) that are created together and
dropped together. Reading predictions' feedback names their ids and the span of their ``created_at``
(``feedback_of``), a join both columns (``feedback_joins_prediction``), so PostgreSQL reads those months' indexes,
not every month's.

A unique constraint on a partitioned table must include the partition key, so the client's idempotency key
``(tenant_id, client_id)`` cannot be unique on either table itself. Each has an unpartitioned key table of that key,
the row's id and its partition key: ``prediction_keys`` and ``feedback_keys``. Ingest inserts the key first
(``ON CONFLICT DO NOTHING``) and the row only when its key was new, in one statement; feedback written outside
ingest (a reviewer's decision, a rule's vote) claims its key in the same transaction (``claim_keys``). For the same
reason nothing holds a foreign key to ``predictions.id`` there: erasure and retention delete the rows that point at
a prediction themselves, and forget the keys of what they delete.

SQLite, the embedded default, keeps two unpartitioned tables with their unique constraints, and none of this
applies (``prediction_created_at`` is written there too: the same code runs on both).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
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

from flywheel.models.records import Feedback, Prediction

log = logging.getLogger(__name__)

TABLE = "predictions"
KEYS_TABLE = "prediction_keys"
DEFAULT_PARTITION = "predictions_default"
FEEDBACK_TABLE = "feedback"
FEEDBACK_KEYS_TABLE = "feedback_keys"
# Tables that point at a prediction by id without a foreign key (there can be none to a partitioned table's id),
# other than the feedback, which is partitioned by its prediction's month and goes with it.
REFERRING = (
    ("label_quality_results", "prediction_id"),
    ("model_training_rows", "prediction_id"),
)
# The key tables, PostgreSQL only (not among the models, which describe the schema both databases share).
KEYS = Table(
    KEYS_TABLE,
    MetaData(),
    Column("tenant_id", Integer, primary_key=True),
    Column("client_id", String(128), primary_key=True),
    Column("prediction_id", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
FEEDBACK_KEYS = Table(
    FEEDBACK_KEYS_TABLE,
    MetaData(),
    Column("tenant_id", Integer, primary_key=True),
    Column("client_id", String(128), primary_key=True),
    Column("feedback_id", Integer, nullable=False),
    Column("prediction_created_at", DateTime(timezone=True), nullable=False),
)
# What differs on PostgreSQL from the models (which describe the SQLite schema): the schema check skips these.
PG_ABSENT_CONSTRAINTS = frozenset(
    {
        "uq_predictions_tenant_id_client_id",
        "uq_feedback_tenant_id_client_id",
        "fk_feedback_prediction_id_predictions",
        "fk_label_quality_results_prediction_id_predictions",
        "fk_model_training_rows_prediction_id_predictions",
    }
)


@dataclass(frozen=True)
class Layout:
    """One partitioned table: its partition key, and its key table (which names the row's id ``row_id`` and holds
    the partition key under the table's own column name)."""

    table: str
    column: str
    keys: Table
    row_id: str
    sequence: str

    @property
    def default(self) -> str:
        return f"{self.table}_default"

    def partition(self, month: datetime) -> str:
        return f"{self.table}_y{month.year:04d}m{month.month:02d}"


PREDICTIONS = Layout(TABLE, "created_at", KEYS, "prediction_id", "predictions_id_seq")
FEEDBACK = Layout(FEEDBACK_TABLE, "prediction_created_at", FEEDBACK_KEYS, "feedback_id", "feedback_id_seq")
LAYOUTS = {layout.table: layout for layout in (PREDICTIONS, FEEDBACK)}


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


def partition_name(month: datetime, table: str = TABLE) -> str:
    return LAYOUTS[table].partition(month)


def _conn(db: Connection | Session) -> Connection:
    return db.connection() if isinstance(db, Session) else db


def is_partitioned(db: Connection | Session) -> bool:
    """True on a PostgreSQL database whose predictions table is partitioned (every one at the latest revision, where
    the feedback table is too)."""
    conn = _conn(db)
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": TABLE}).scalar()
    return kind == "p"


def keys_apart(db: Connection | Session) -> bool:
    """Whether the idempotency keys live in the key tables (partitioned PostgreSQL), read once per pooled database
    connection. The catalog read leaves no transaction open behind it: a single-item ingest that runs as its own
    transaction (no BEGIN) stays one."""
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


def by_client_ids(
    db: Connection | Session,
    tenant_id: int,
    client_ids: list[str],
    model: type[Prediction] | type[Feedback] = Prediction,
) -> ColumnElement[bool]:
    """The condition selecting a tenant's predictions (or feedback) by the client's ids, index-backed on either
    layout.

    Partitioned, the ids are found in the key table (its primary key), which also holds each row's partition key:
    the lookup then reads one partition's primary key per id. Unpartitioned, the table's own unique key serves."""
    if keys_apart(db):
        layout = LAYOUTS[model.__tablename__]
        keys = layout.keys
        found = select(keys.c[layout.row_id], keys.c[layout.column]).where(
            keys.c.tenant_id == tenant_id, keys.c.client_id.in_(client_ids)
        )
        return tuple_(model.id, getattr(model, layout.column)).in_(found)
    return (model.tenant_id == tenant_id) & model.client_id.in_(client_ids)


def feedback_of(predictions: Iterable[tuple[int, datetime]]) -> ColumnElement[bool]:
    """The feedback of these ``(id, created_at)`` predictions. The span of the ``created_at`` values bounds the
    feedback's partitions, so on PostgreSQL only those months' ``prediction_id`` indexes are read, not every month's
    (a range rather than the list of values: as cheap to check on each row as to prune with, measured)."""
    pairs = list(predictions)
    return Feedback.prediction_id.in_(sorted({pk for pk, _ in pairs})) & _within(Feedback.prediction_created_at, pairs)


def predictions_in(predictions: Iterable[tuple[int, datetime]]) -> ColumnElement[bool]:
    """These ``(id, created_at)`` predictions, read from the partitions of their months only."""
    pairs = list(predictions)
    return Prediction.id.in_(sorted({pk for pk, _ in pairs})) & _within(Prediction.created_at, pairs)


def _within(column: Any, pairs: list[tuple[int, datetime]]) -> ColumnElement[bool]:
    stamps = [created for _, created in pairs]
    return column.between(min(stamps), max(stamps)) if stamps else column.is_(None)


def feedback_joins_prediction() -> ColumnElement[bool]:
    """Feedback joined to its prediction on both the id and the partition key: a nested loop over predictions then
    reads one month's feedback per prediction (run-time partition pruning), not every month's."""
    return (Feedback.prediction_id == Prediction.id) & (Feedback.prediction_created_at == Prediction.created_at)


def register_keys(db: Connection | Session) -> int:
    """Give every prediction and feedback row written around ingest (a bulk import with ``COPY``, seeded test data)
    its idempotency key; returns how many were missing. A no-op where the key is the table's own unique constraint
    (SQLite)."""
    if not keys_apart(db):
        return 0
    return sum(
        int(
            _conn(db)
            .execute(
                text(
                    f"INSERT INTO {layout.keys.name} (tenant_id, client_id, {layout.row_id}, {layout.column}) "
                    f"SELECT tenant_id, client_id, id, {layout.column} FROM {layout.table} ON CONFLICT DO NOTHING"
                )
            )
            .rowcount
        )
        for layout in LAYOUTS.values()
    )


def claim_keys(
    db: Connection | Session,
    model: type[Prediction] | type[Feedback],
    keys: Iterable[tuple[int, str, int, datetime]],
) -> None:
    """Record the idempotency keys ``(tenant_id, client_id, row id, partition key)`` of rows just written outside
    ingest's keyed insert (a reviewer's decision, rule votes), in the caller's transaction. A key already taken
    raises ``IntegrityError``, as the table's own unique constraint does where the key is one (SQLite: a no-op)."""
    rows = list(keys)
    if rows and keys_apart(db):
        layout = LAYOUTS[model.__tablename__]
        _conn(db).execute(
            layout.keys.insert(),
            [{"tenant_id": t, "client_id": c, layout.row_id: pk, layout.column: when} for t, c, pk, when in rows],
        )


def insert_feedback(db: Connection | Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert feedback rows (every column but ``id``) written outside ingest, with their keys (``claim_keys``)."""
    if not rows:
        return
    table: Table = Feedback.__table__  # type: ignore[assignment]
    conn = _conn(db)
    if not keys_apart(db):
        conn.execute(table.insert(), list(rows))
        return
    stored = conn.execute(
        table.insert().returning(table.c.tenant_id, table.c.client_id, table.c.id, table.c.prediction_created_at),
        list(rows),
    )
    claim_keys(conn, Feedback, [tuple(row) for row in stored])


def delete_feedback(db: Connection | Session, where: ColumnElement[bool]) -> int:
    """Delete the feedback rows ``where`` selects and forget their idempotency keys; returns how many went."""
    table: Table = Feedback.__table__  # type: ignore[assignment]
    conn = _conn(db)
    if not keys_apart(db):
        return int(conn.execute(table.delete().where(where)).rowcount)
    gone = conn.execute(table.delete().where(where).returning(table.c.tenant_id, table.c.client_id)).all()
    by_tenant: dict[int, list[str]] = defaultdict(list)
    for tenant_id, client_id in gone:
        by_tenant[tenant_id].append(client_id)
    for tenant_id, client_ids in by_tenant.items():
        forget_keys(conn, tenant_id, client_ids, Feedback)
    return len(gone)


def partitions(db: Connection | Session, table: str = TABLE) -> list[Partition]:
    """The monthly partitions of ``table``, oldest first (the default partition is not listed)."""
    layout = LAYOUTS[table]
    rows = _conn(db).execute(
        text(
            "SELECT c.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": table},
    )
    found = []
    for (name,) in rows:
        if name == layout.default:
            continue
        start = datetime.strptime(name[-8:], "y%Ym%m").replace(tzinfo=UTC)  # predictions_yYYYYmMM
        found.append(Partition(name=name, start=start, end=add_months(start, 1)))
    return sorted(found, key=lambda p: p.start)


def create_month(db: Connection | Session, month: datetime) -> list[str]:
    """Create the partitions of ``month``, the predictions' and the feedback's, unless they exist; returns the names
    created (empty, so false, when both existed).

    Rows of that month already sitting in a default partition are moved into the new one first (PostgreSQL refuses
    to attach a range that the default partition holds rows of), all in the caller's transaction.
    """
    conn = _conn(db)
    return [name for layout in LAYOUTS.values() if (name := _create(conn, layout, month_start(month)))]


def _create(conn: Connection, layout: Layout, month: datetime) -> str | None:
    name = layout.partition(month)
    if conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
        return None
    bounds = {"lo": month, "hi": add_months(month, 1)}
    conn.execute(text(f'CREATE TABLE "{name}" (LIKE {layout.table} INCLUDING DEFAULTS)'))
    moved = conn.execute(
        text(
            f'WITH moved AS (DELETE FROM "{layout.default}" WHERE {layout.column} >= :lo AND {layout.column} < :hi '
            f'RETURNING *) INSERT INTO "{name}" SELECT * FROM moved'
        ),
        bounds,
    ).rowcount
    lo, hi = (v.isoformat() for v in bounds.values())
    conn.execute(text(f"ALTER TABLE {layout.table} ATTACH PARTITION \"{name}\" FOR VALUES FROM ('{lo}') TO ('{hi}')"))
    log.info("created partition %s (%d rows moved in from the default partition)", name, moved)
    return name


def ensure_partitions(db: Connection | Session, now: datetime, *, months_ahead: int = 3) -> list[str]:
    """Create this month's partitions and the next ``months_ahead`` ones (predictions and feedback); returns the
    names created.

    Run daily by the scheduler, so a month's partitions exist long before its first row arrives."""
    if not is_partitioned(db):
        return []
    first = month_start(now)
    return [name for i in range(months_ahead + 1) for name in create_month(db, add_months(first, i))]


@dataclass(frozen=True)
class Dropped:
    """What retention removed: whole partitions (both tables'), with the predictions and feedback rows they held."""

    partitions: list[str]
    predictions: int
    feedback: int


def expired(db: Connection | Session, cutoff: datetime) -> list[Partition]:
    """The monthly partitions of the predictions that end on or before ``cutoff``, oldest first."""
    return [part for part in partitions(db) if part.end <= cutoff]


def drop_before(db: Connection | Session, cutoff: datetime) -> Dropped:
    """Drop every month that ends on or before ``cutoff``: the label-quality results and lineage rows that point at
    its predictions are deleted, its feedback partition goes whole with the predictions' (each table's idempotency
    keys of the month deleted first). Rows of the default partitions are left to row-by-row retention
    (``flywheel.domain.erasure``)."""
    conn = _conn(db)
    gone: list[str] = []
    counts = {"predictions": 0, "feedback": 0}
    for part in expired(conn, cutoff):
        _delete_referring(conn, f'SELECT id FROM "{part.name}"')
        feedback = FEEDBACK.partition(part.start)
        if conn.execute(text("SELECT to_regclass(:n)"), {"n": feedback}).scalar() is not None:
            counts["feedback"] += drop_partition(conn, FEEDBACK, feedback)
            gone.append(feedback)
        else:  # a month created before the feedback was partitioned by month: its rows, one by one
            counts["feedback"] += _delete_feedback_between(conn, part.start, part.end)
        counts["predictions"] += drop_partition(conn, PREDICTIONS, part.name)
        gone.append(part.name)
    if gone:
        log.info("retention dropped partitions %s", ", ".join(gone))
    return Dropped(partitions=gone, **counts)


def drop_partition(db: Connection | Session, layout: Layout, name: str) -> int:
    """Forget the keys of one month's partition of ``layout``'s table, detach and drop it; returns how many rows it
    held. Nothing else is deleted: ``drop_before`` is retention's whole step."""
    conn = _conn(db)
    conn.execute(
        text(
            f'DELETE FROM {layout.keys.name} k USING "{name}" p '
            "WHERE k.tenant_id = p.tenant_id AND k.client_id = p.client_id"
        )
    )
    rows = int(conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one())
    conn.execute(text(f'ALTER TABLE {layout.table} DETACH PARTITION "{name}"'))
    conn.execute(text(f'DROP TABLE "{name}"'))
    return rows


def _delete_feedback_between(conn: Connection, start: datetime, end: datetime) -> int:
    return int(
        conn.execute(
            text(
                f"WITH gone AS (DELETE FROM {FEEDBACK_TABLE} WHERE prediction_created_at >= :lo "
                "AND prediction_created_at < :hi RETURNING tenant_id, client_id), "
                f"keys AS (DELETE FROM {FEEDBACK_KEYS_TABLE} k USING gone g "
                "WHERE k.tenant_id = g.tenant_id AND k.client_id = g.client_id) "
                "SELECT count(*) FROM gone"
            ),
            {"lo": start, "hi": end},
        ).scalar_one()
    )


def forget_keys(
    db: Connection | Session,
    tenant_id: int,
    client_ids: list[str],
    model: type[Prediction] | type[Feedback] = Prediction,
) -> None:
    """Remove the idempotency keys of erased predictions (or feedback): their ids may be used again. A no-op on
    SQLite."""
    if client_ids and keys_apart(db):
        keys = LAYOUTS[model.__tablename__].keys
        conn = _conn(db)
        for start in range(0, len(client_ids), 1000):
            chunk = client_ids[start : start + 1000]
            conn.execute(keys.delete().where(keys.c.tenant_id == tenant_id, keys.c.client_id.in_(chunk)))


def _delete_referring(conn: Connection, ids_sql: str, **params: object) -> None:
    """Delete the rows of every table (but the feedback) that points at the predictions ``ids_sql`` selects."""
    for table, column in REFERRING:
        conn.execute(text(f"DELETE FROM {table} WHERE {column} IN ({ids_sql})"), params)


def include_in_schema_check(dialect: str) -> Callable[..., bool]:
    """An Alembic ``include_object`` hook that leaves out what partitioning changes on PostgreSQL (the partitions,
    the key tables, the moved unique keys and the dropped foreign keys), so that comparing the models with a
    database checks everything else."""
    prefixes = tuple(f"{table}_" for table in LAYOUTS)
    key_tables = {layout.keys.name for layout in LAYOUTS.values()}

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if dialect != "postgresql" or name is None:
            return True
        if type_ == "table" and reflected and compare_to is None:
            return not (name in key_tables or name.startswith(prefixes))
        return name not in PG_ABSENT_CONSTRAINTS

    return include
