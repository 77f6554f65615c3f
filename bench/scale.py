"""PostgreSQL at scale: the hot queries and ingest on 1M and 10M predictions, partitioned against unpartitioned.

    .venv/bin/python bench/scale.py                                # 1M and 10M predictions (about 40 minutes)
    .venv/bin/python bench/scale.py --sizes 1000000 --repeat 3     # a quick look
    .venv/bin/python bench/scale.py --database-url postgresql+psycopg://postgres@db:5432/postgres

For each size, two databases get the same rows, generated in SQL (``generate_series`` over banking77's real texts,
not through the API): ``--tenants`` tenants over ``--months`` months, one in ten predictions labeled by an end
user's feedback, one SLA per tenant, and label-quality results for one tenant. One database is at the latest
revision (the predictions and their feedback in monthly partitions, the ``prediction_keys`` and ``feedback_keys``
idempotency tables); in the other both tables are put back as plain tables (each idempotency key a unique
constraint): the baseline, side by side.

Timed through the product's own functions, median of ``--repeat`` after one untimed warm-up:

- the SLA pass: every tenant's SLA evaluated over its 7-day window (``run_monitoring``, drift off);
- the dashboard overview (``GET /dashboard/`` through the Flask test client, signed in as admin);
- a tenant's review queue (``review_queue``, label issues and uncertain predictions);
- training-set assembly (``build_training_data``) for one tenant's variant and for the shared model;
- ingest: 1,000-item batches through ``ingest_predictions`` into each database, interleaved; rows/s and the ratio;
- feedback ingest: 1,000-item batches through ``ingest_feedback`` (on predictions spread over every month; the
  effective labels re-derived as in production), interleaved; rows/s;
- retention of the oldest full month, last (it deletes data): partitioned, the month dropped whole
  (``drop_expired_months``: both tables' partitions, their keys, the label-quality rows and lineage that point at
  them); plain, that month's feedback deleted row by row, then its predictions.

Then the cost curve: how each figure grows from the smallest size to the largest (the exponent k of cost ∝ rows^k)
and the projection to 100M rows at that exponent.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from flywheel.app import create_app
from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.core.migrate import upgrade
from flywheel.domain import partitions
from flywheel.domain.auth import create_key
from flywheel.domain.erasure import drop_expired_months
from flywheel.domain.ingest import ingest_feedback, ingest_predictions
from flywheel.domain.schemas import FeedbackIn, PredictionIn
from flywheel.feedback.review import review_queue
from flywheel.models.records import Task, Tenant
from flywheel.monitoring.jobs import run_monitoring
from flywheel.retrain.dataset import build_training_data

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"
CHUNK = 1_000_000


def fresh(server_url: str, name: str) -> Database:
    base = make_url(server_url)
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return Database(base.set(database=name).render_as_string(hide_password=False))


def migrate(db: Database, *, partitioned: bool) -> None:
    """The latest schema; for the baseline, its predictions and feedback tables put back as plain tables (what
    revisions 0012 and 0008 undo: each idempotency key a unique constraint again, and the foreign keys to
    ``predictions.id``)."""
    upgrade(db.engine)
    if partitioned:
        return
    with db.engine.begin() as conn:
        for statement in _FLATTEN:
            conn.execute(text(statement))


_FLATTEN = [
    "ALTER TABLE predictions RENAME TO predictions_parted",
    "ALTER TABLE predictions_parted DROP CONSTRAINT pk_predictions",
    "DROP INDEX ix_predictions_tenant_task_created",
    "CREATE TABLE predictions (LIKE predictions_parted INCLUDING DEFAULTS)",
    "ALTER SEQUENCE predictions_id_seq OWNED BY predictions.id",
    "DROP TABLE predictions_parted",
    "DROP TABLE prediction_keys",
    "ALTER TABLE predictions ADD CONSTRAINT pk_predictions PRIMARY KEY (id)",
    "ALTER TABLE predictions ADD CONSTRAINT uq_predictions_tenant_id_client_id UNIQUE (tenant_id, client_id)",
    "CREATE INDEX ix_predictions_tenant_task_created ON predictions (tenant_id, task_id, created_at)",
    "ALTER TABLE feedback RENAME TO feedback_parted",
    "ALTER TABLE feedback_parted DROP CONSTRAINT pk_feedback",
    "ALTER TABLE feedback_parted DROP CONSTRAINT fk_feedback_tenant_id_tenants",
    "DROP INDEX ix_feedback_prediction_id",
    "CREATE TABLE feedback (LIKE feedback_parted INCLUDING DEFAULTS)",
    "ALTER SEQUENCE feedback_id_seq OWNED BY feedback.id",
    "DROP TABLE feedback_parted",
    "DROP TABLE feedback_keys",
    "ALTER TABLE feedback ADD CONSTRAINT pk_feedback PRIMARY KEY (id)",
    "ALTER TABLE feedback ADD CONSTRAINT uq_feedback_tenant_id_client_id UNIQUE (tenant_id, client_id)",
    "CREATE INDEX ix_feedback_prediction_id ON feedback (prediction_id)",
    *(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_{column}_{target} FOREIGN KEY ({column}) "
        f"REFERENCES {target} (id) ON DELETE CASCADE"
        for table, column, target in (
            ("predictions", "tenant_id", "tenants"),
            ("predictions", "task_id", "tasks"),
            ("feedback", "tenant_id", "tenants"),
            ("feedback", "prediction_id", "predictions"),
            ("label_quality_results", "prediction_id", "predictions"),
            ("model_training_rows", "prediction_id", "predictions"),
        )
    ),
]


def seed(db: Database, *, rows: int, tenants: int, months: int, end: datetime) -> str:
    """Tenants, the banking77 task, ``rows`` predictions spread evenly over tenants and months, feedback on one in
    ten, an SLA per tenant and label-quality results for tenant 0. Returns an admin key."""
    with DATA.open(newline="", encoding="utf-8") as fh:
        texts = list(csv.DictReader(fh))
    labels = sorted({r["label"] for r in texts})
    with db.session() as session:
        session.add(Task(name="banking77", labels=labels, label_descriptions={}, description=""))
        session.add_all(Tenant(slug=f"tenant-{i:03d}", name=f"Tenant {i:03d}") for i in range(tenants))
        session.flush()
        key = create_key(session, tenant=None, scopes=["admin"])[1]
    start = end - timedelta(days=30.4 * months)
    with db.session() as session:  # the months the housekeeping job would have created over the year
        if partitions.is_partitioned(session):
            for i in range(months + 1):
                partitions.create_month(session, partitions.add_months(partitions.month_start(start), i))
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TEMP TABLE bench_texts (i int PRIMARY KEY, text text, label text, other text)"))
        conn.execute(
            text("INSERT INTO bench_texts VALUES (:i, :text, :label, :other)"),
            [
                {"i": i, "text": r["text"], "label": r["label"], "other": labels[(labels.index(r["label"]) + 1) % 77]}
                for i, r in enumerate(texts)
            ],
        )
        params = {"n": rows, "tenants": tenants, "ntexts": len(texts), "start": start, "span": end - start}
        for lo in range(0, rows, CHUNK):
            t0 = time.perf_counter()
            conn.execute(text(_PREDICTIONS), {**params, "lo": lo + 1, "hi": min(lo + CHUNK, rows)})
            print(f"    {min(lo + CHUNK, rows):>11,} predictions ({time.perf_counter() - t0:.0f} s)", flush=True)
        conn.execute(text(_FEEDBACK))
        partitions.register_keys(conn)  # written around ingest: their idempotency keys (partitioned)
        conn.execute(text(_SLAS))
        conn.execute(text(_LABEL_QUALITY))
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return key


# Prediction g: tenant g % tenants, text g % ntexts, created at its even share of the span; one in ten labeled
# (g % 1000 < 100: every tenant gets its share), one label in seven of those wrong (for the SLA pass to measure).
_PREDICTIONS = """
INSERT INTO predictions (tenant_id, task_id, client_id, text, label, confidence, probabilities, model_version,
    metadata, created_at, received_at, content_hash, bucket, effective_label, label_discarded, feedback_count)
SELECT t.id, 1, 'p' || g, b.text, b.label, 0.5 + (g % 50) / 100.0,
    json_build_object(b.label, 0.5 + (g % 50) / 100.0, b.other, 0.5 - (g % 50) / 100.0), 'm1',
    json_build_object('user_id', 'u-' || (g % 5000)),
    CAST(:start AS timestamptz) + (g / CAST(:n AS float8)) * CAST(:span AS interval), now(), md5(g::text),
    (hashtext('p' || g) & 2147483647) % 100,
    CASE WHEN g % 1000 < 100 THEN (CASE WHEN g % 7 = 0 THEN b.other ELSE b.label END) END, false,
    (g % 1000 < 100)::int
FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) AS g
JOIN tenants t ON t.id = 1 + g % CAST(:tenants AS int)
JOIN bench_texts b ON b.i = g % CAST(:ntexts AS int)
"""
_FEEDBACK = """
INSERT INTO feedback (tenant_id, prediction_id, prediction_created_at, client_id, label, source, created_at,
    received_at, content_hash)
SELECT tenant_id, id, created_at, 'f' || id, effective_label, 'end_user', created_at + interval '1 hour', now(),
    md5(id::text)
FROM predictions WHERE effective_label IS NOT NULL
"""
_SLAS = """
INSERT INTO slas (tenant_id, task_id, metric, threshold, window_days, min_labeled, warning_margin, version,
    created_at, updated_at)
SELECT id, 1, 'accuracy', 0.85, 7, 50, 0.02, 1, now(), now() FROM tenants
"""
_LABEL_QUALITY = """
WITH run AS (
    INSERT INTO label_quality_runs (tenant_id, task_id, status, progress, message, trigger, n_labeled, n_issues,
        n_unlabeled, summary, started_at, finished_at)
    VALUES (1, 1, 'succeeded', 1, '', 'bench', 0, 0, 0, '{}', now(), now()) RETURNING id),
labeled AS (
    INSERT INTO label_quality_results (run_id, tenant_id, task_id, prediction_id, kind, given_label, quality,
        is_issue, suggested_label)
    SELECT run.id, p.tenant_id, 1, p.id, 'labeled', p.effective_label, (hashtext(p.client_id) & 1023) / 1024.0,
        p.label <> p.effective_label, p.label
    FROM predictions p, run WHERE p.tenant_id = 1 AND p.effective_label IS NOT NULL)
INSERT INTO label_quality_results (run_id, tenant_id, task_id, prediction_id, kind, is_issue, active_score)
SELECT run.id, 1, 1, u.id, 'unlabeled', false, (hashtext(u.client_id) & 1023) / 1024.0
FROM run, (SELECT id, client_id FROM predictions WHERE tenant_id = 1 AND effective_label IS NULL
           ORDER BY created_at DESC LIMIT 5000) AS u
"""


def timed(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def hot_queries(db: Database, key: str, *, repeat: int, now: datetime, tmp: Path) -> dict[str, float]:
    settings = Settings(database_url=db.url, artifacts_dir=tmp / "artifacts", secret_key="bench", log_level="WARNING")
    app = create_app(settings, db=db)
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/dashboard/login").get_data(as_text=True))
    assert token
    client.post("/dashboard/login", data={"api_key": key, "csrf_token": token.group(1)})

    def overview() -> None:
        response = client.get("/dashboard/")
        assert response.status_code == 200, response.status_code

    def review(kind: str) -> Callable[[], None]:
        def run() -> None:
            with db.session() as session:
                assert review_queue(session, tenant_id=1, task_id=1, kind=kind, limit=50)

        return run

    def assemble(tenant_id: int | None) -> Callable[[], None]:
        def run() -> None:
            with db.session() as session:
                task = session.scalars(select(Task)).one()
                tenant = session.get(Tenant, tenant_id) if tenant_id else None
                build_training_data(session, task, tenant, holdout_percent=15)

        return run

    return {
        "SLA pass, every tenant": timed(
            lambda: run_monitoring(db, settings, now=now, drift=False, deliver=False), max(1, repeat // 2)
        ),
        "dashboard overview": timed(overview, repeat),
        "review queue: label issues": timed(review("label_issue"), repeat),
        "review queue: uncertain": timed(review("uncertain"), repeat),
        "training set: one tenant": timed(assemble(1), repeat),
        "training set: shared model": timed(assemble(None), max(1, repeat // 2)),
    }


def ingest_rates(dbs: dict[str, Database], *, batches: int, tenants: int, now: datetime) -> dict[str, float]:
    """Rows per second of 1,000-item batches through the product's ingest, the arms interleaved batch by batch."""
    with DATA.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    samples: dict[str, list[float]] = {name: [] for name in dbs}
    run = uuid.uuid4().hex[:6]
    for b in range(batches):
        for name, db in dbs.items():
            items = [
                PredictionIn(
                    id=f"ingest-{run}-{b}-{i}",
                    task="banking77",
                    text=rows[i]["text"],
                    label=rows[i]["label"],
                    confidence=0.8,
                    created_at=now,
                    metadata={"user_id": f"u-{i}"},
                )
                for i in range(1000)
            ]
            t0 = time.perf_counter()
            with db.session() as session:
                ingest_predictions(session, 1 + b % tenants, items)
            samples[name].append(time.perf_counter() - t0)
    return {name: 1000 / statistics.median(s) for name, s in samples.items()}


def feedback_ingest_rates(
    dbs: dict[str, Database], *, batches: int, rows: int, tenants: int, now: datetime
) -> dict[str, float]:
    """Rows per second of 1,000-item feedback batches through the product's ingest (the effective labels of the
    touched predictions re-derived), the arms interleaved batch by batch. Batch ``b`` labels predictions of tenant
    ``1 + b % tenants`` spread over the whole span, so every month's partition takes some."""
    with next(iter(dbs.values())).session() as session:
        labels = list(session.scalars(select(Task.labels)).one())
    per_tenant = rows // tenants
    samples: dict[str, list[float]] = {name: [] for name in dbs}
    run = uuid.uuid4().hex[:6]
    for b in range(batches):
        tenant = 1 + b % tenants
        # prediction g belongs to tenant 1 + g % tenants; 997 is prime, so the 1,000 picks are distinct
        picks = [tenant - 1 + tenants * (1 + (i * 997 + b * 13) % (per_tenant - 1)) for i in range(1000)]
        items = [
            FeedbackIn(
                id=f"fb-{run}-{b}-{i}",
                prediction_id=f"p{g}",
                label=labels[i % len(labels)],
                source="annotator",
                source_id=f"a-{i % 7}",
                created_at=now,
            )
            for i, g in enumerate(picks)
        ]
        for name, db in dbs.items():
            t0 = time.perf_counter()
            with db.session() as session:
                ingest_feedback(session, tenant, items)
            samples[name].append(time.perf_counter() - t0)
    return {name: 1000 / statistics.median(s) for name, s in samples.items()}


def month_retention(dbs: dict[str, Database], *, start: datetime, now: datetime) -> dict[str, dict[str, float]]:
    """The oldest full month of the span removed (ms). Partitioned: ``drop_expired_months`` with the cutoff at its
    end (the partial month before it is dropped first, untimed). Plain: the month's feedback deleted row by row (what
    retention did to the feedback before it was partitioned), then its predictions (their label-quality rows follow
    by their foreign keys)."""
    first = partitions.month_start(start)
    lo, hi = partitions.add_months(first, 1), partitions.add_months(first, 2)
    out: dict[str, dict[str, float]] = {}
    for name, db in dbs.items():
        with db.session() as session:
            n = session.scalar(
                text(
                    "SELECT count(*) FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
                    "WHERE p.created_at >= :lo AND p.created_at < :hi"
                ),
                {"lo": lo, "hi": hi},
            )
        print(f"    {name}: one month ({lo:%Y-%m}) with {n:,} feedback rows", flush=True)
        if name == "partitioned":
            with db.session() as session:
                drop_expired_months(session, lo, now)  # the partial first month, untimed
            t0 = time.perf_counter()
            with db.session() as session:  # the step of retention that drops the month's feedback, timed apart
                gone = partitions.drop_partition(session, partitions.FEEDBACK, partitions.FEEDBACK.partition(lo))
            feedback_ms = (time.perf_counter() - t0) * 1000
            with db.session() as session:  # and the rest of it
                dropped = drop_expired_months(session, hi, now)
            out[name] = {
                "retention: the month's feedback": feedback_ms,
                "retention: the whole month": (time.perf_counter() - t0) * 1000,
            }
            print(f"    dropped {dropped.partitions} and {gone:,} feedback rows' partition", flush=True)
            continue
        month = "SELECT id FROM predictions WHERE created_at >= :lo AND created_at < :hi"
        t0 = time.perf_counter()
        with db.session() as session:
            session.execute(text(f"DELETE FROM feedback WHERE prediction_id IN ({month})"), {"lo": lo, "hi": hi})
        feedback_ms = (time.perf_counter() - t0) * 1000
        with db.session() as session:
            session.execute(text(f"DELETE FROM predictions WHERE id IN ({month})"), {"lo": lo, "hi": hi})
        out[name] = {
            "retention: the month's feedback": feedback_ms,
            "retention: the whole month": (time.perf_counter() - t0) * 1000,
        }
    return out


def size_of(db: Database) -> str:
    with db.engine.connect() as conn:
        return str(conn.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ingest-batches", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the databases (flywheel_scale_*) afterwards")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: the benchmark uses banking77's texts from ../shared/data")
    now = datetime.now(UTC).replace(microsecond=0)
    figures: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            dbs: dict[str, Database] = {}
            figures[size] = {}
            for arm in ("unpartitioned", "partitioned"):
                print(f"{size:,} predictions, {arm}: seeding", flush=True)
                db = fresh(args.database_url, f"flywheel_scale_{size}_{arm}")
                migrate(db, partitioned=arm == "partitioned")
                t0 = time.perf_counter()
                key = seed(db, rows=size, tenants=args.tenants, months=args.months, end=now)
                print(f"    seeded in {time.perf_counter() - t0:.0f} s, {size_of(db)}", flush=True)
                figures[size][arm] = hot_queries(db, key, repeat=args.repeat, now=now, tmp=Path(tmp))
                dbs[arm] = db
            rates = ingest_rates(dbs, batches=args.ingest_batches, tenants=args.tenants, now=now)
            for arm, rate in rates.items():
                figures[size][arm]["ingest rows/s"] = rate
            rates = feedback_ingest_rates(dbs, batches=args.ingest_batches, rows=size, tenants=args.tenants, now=now)
            for arm, rate in rates.items():
                figures[size][arm]["feedback ingest rows/s"] = rate
            start = now - timedelta(days=30.4 * args.months)
            for arm, times in month_retention(dbs, start=start, now=now).items():
                figures[size][arm].update(times)
            report_size(size, figures[size])
            for name, db in dbs.items():
                db.dispose()
                if not args.keep:
                    server = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
                    with server.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "flywheel_scale_{size}_{name}" WITH (FORCE)'))
                    server.dispose()
    if len(args.sizes) > 1:
        report_curve(figures)
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in figures.items()}, indent=2))


def report_size(size: int, arms: dict[str, dict[str, float]]) -> None:
    print(f"\n{size:,} predictions (ms, median; ingest in rows/s)")
    print(f"  {'':32} {'unpartitioned':>14} {'partitioned':>12} {'ratio':>7}")
    for name in arms["partitioned"]:
        flat, part = arms["unpartitioned"][name], arms["partitioned"][name]
        print(f"  {name:32} {flat:>14,.1f} {part:>12,.1f} {part / flat:>6.2f}x")
    print()


def report_curve(figures: dict[int, dict[str, dict[str, float]]]) -> None:
    small, large = min(figures), max(figures)
    print(f"Cost curve of the partitioned database, {small:,} -> {large:,} rows, projected to 100M")
    print(f"  {'':32} {small:>12,} {large:>12,} {'k':>6} {'100M (proj.)':>14}")
    for name, value in figures[large]["partitioned"].items():
        a, b = figures[small]["partitioned"][name], value
        k = math.log(b / a) / math.log(large / small)
        projected = b * (100_000_000 / large) ** k
        print(f"  {name:32} {a:>12,.1f} {b:>12,.1f} {k:>6.2f} {projected:>14,.1f}")


if __name__ == "__main__":
    main()
