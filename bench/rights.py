"""Data rights at volume: the export stream's throughput and memory, and erasure of 1,000 ids, beside a baseline.

    .venv/bin/python bench/rights.py --rows 200000                      # SQLite
    .venv/bin/python bench/rights.py --rows 200000 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Seeds ``--rows`` predictions (a third with one feedback item) for one tenant with set-based inserts, then:

- export: ``GET /v1/export`` (JSON Lines and Parquet) through the Flask test client, reading the streamed body chunk by
  chunk; rows/s, and the Python heap's peak (tracemalloc) during the stream, against the peak of a plain
  ``SELECT`` of every row into a list (what a non-streamed export would hold);
- erasure: ``POST /v1/erasure`` with 1,000 ids whose rows trained a model version (1,000 lineage rows), against a
  bare ``DELETE`` of the same predictions and feedback.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, delete, insert, select, text
from sqlalchemy.engine import make_url

from flywheel.app import create_app
from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.core.migrate import upgrade
from flywheel.domain import partitions
from flywheel.domain.auth import create_key
from flywheel.models.records import Feedback, Prediction, Task, Tenant
from flywheel.models.training import ModelTrainingRow, ModelVersion

LABELS = ["card_arrival", "card_linking", "lost_or_stolen_card", "exchange_rate"]


def seed(db: Database, rows: int) -> tuple[str, list[str]]:
    with db.session() as session:
        tenant = Tenant(slug="acme", name="Acme")
        task = Task(name="intent", labels=LABELS, label_descriptions={}, description="")
        session.add_all([tenant, task])
        session.flush()
        tenant_id, task_id = tenant.id, task.id
        key = create_key(session, tenant=tenant, scopes=["ingest", "read"])[1]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for lo in range(0, rows, 10_000):
        batch = range(lo, min(rows, lo + 10_000))
        with db.session() as session:
            session.execute(
                insert(Prediction),
                [
                    {
                        "tenant_id": tenant_id,
                        "task_id": task_id,
                        "client_id": f"p-{i}",
                        "text": f"I am still waiting on my card, order number {i}",
                        "label": LABELS[i % 4],
                        "confidence": 0.8,
                        "probabilities": None,
                        "model_version": "v1",
                        "metadata_": {"user_id": f"u-{i % 997}"},
                        "created_at": start + timedelta(seconds=i),
                        "received_at": start,
                        "content_hash": f"{i:064x}",
                        "bucket": i % 100,
                        "effective_label": LABELS[(i + 1) % 4] if i % 3 == 0 else None,
                        "label_discarded": False,
                        "feedback_count": 1 if i % 3 == 0 else 0,
                    }
                    for i in batch
                ],
            )
            ids = {
                cid: (pk, created)
                for cid, pk, created in session.execute(
                    select(Prediction.client_id, Prediction.id, Prediction.created_at).where(
                        Prediction.client_id.in_([f"p-{i}" for i in batch if i % 3 == 0])
                    )
                )
            }
            session.execute(
                insert(Feedback),
                [
                    {
                        "tenant_id": tenant_id,
                        "prediction_id": pk,
                        "prediction_created_at": created,
                        "client_id": f"fb-{cid}",
                        "label": LABELS[0],
                        "source": "end_user",
                        "source_id": None,
                        "created_at": start,
                        "received_at": start,
                        "content_hash": hashlib.sha256(cid.encode()).hexdigest(),
                    }
                    for cid, (pk, created) in ids.items()
                ],
            )
    with db.session() as session:  # written around ingest: their idempotency keys too (partitioned PostgreSQL)
        partitions.register_keys(session)
    return key, [f"p-{i}" for i in range(0, min(rows, 3000), 3)]


def _export(app: object, key: str, fmt: str) -> tuple[int, float]:
    client = app.test_client()  # type: ignore[attr-defined]
    started = time.perf_counter()
    response = client.get(
        f"/v1/export?task=intent&format={fmt}", headers={"Authorization": f"Bearer {key}"}, buffered=False
    )
    size = sum(len(chunk) for chunk in response.response)
    return size, time.perf_counter() - started


def bench_export(app: object, key: str, fmt: str, db: Database) -> str:
    """Throughput untraced; then the heap peak of a second, traced run (tracemalloc slows Python several times)."""
    import pyarrow.parquet  # noqa: F401  (imported before tracing: its modules are not the export's memory)

    size, elapsed = _export(app, key, fmt)
    tracemalloc.start()
    _export(app, key, fmt)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tracemalloc.start()
    with db.session() as session:
        everything = session.execute(select(Prediction.client_id, Prediction.text, Prediction.metadata_)).all()
    baseline_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    n = len(everything)
    return (
        f"export {fmt}: {n} rows in {elapsed:.2f} s ({n / elapsed:,.0f} rows/s, {size / 1e6:.1f} MB); "
        f"heap peak {peak / 1e6:.1f} MB streamed vs {baseline_peak / 1e6:.1f} MB for one SELECT into a list"
    )


def bench_erasure(app: object, key: str, db: Database, ids: list[str]) -> str:
    with db.session() as session:
        task_id = session.scalar(select(Task.id))
        model = ModelVersion(task_id=task_id, version="shared-1", rung="few_shot", status="champion")
        session.add(model)
        session.flush()
        pks = list(session.scalars(select(Prediction.id).where(Prediction.client_id.in_(ids))))
        session.execute(insert(ModelTrainingRow), [{"model_id": model.id, "prediction_id": pk} for pk in pks])
    client = app.test_client()  # type: ignore[attr-defined]
    started = time.perf_counter()
    answer = client.post("/v1/erasure", json={"prediction_ids": ids}, headers={"Authorization": f"Bearer {key}"})
    erase_s = time.perf_counter() - started
    counts = answer.get_json()
    others = [f"p-{i}" for i in range(3000, 3000 + 3 * len(ids), 3)]
    started = time.perf_counter()
    with db.session() as session:
        victims = select(Prediction.id).where(Prediction.client_id.in_(others))
        session.execute(delete(Feedback).where(Feedback.prediction_id.in_(victims)))
        session.execute(delete(Prediction).where(Prediction.client_id.in_(others)))
    bare_s = time.perf_counter() - started
    return (
        f"erasure of {len(ids)} ids: {erase_s * 1000:.0f} ms through the API ({counts})\n"
        f"  vs {bare_s * 1000:.0f} ms for a bare DELETE of {len(others)} predictions and their feedback"
        f" ({erase_s / bare_s:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        admin = None
        if args.database_url:
            name = f"flywheel_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = make_url(args.database_url).set(database=name).render_as_string(hide_password=False)
        db = Database(url)
        try:
            upgrade(db.engine)
            key, ids = seed(db, args.rows)
            app = create_app(Settings(database_url=url, artifacts_dir=Path(tmp) / "artifacts"), db=db)
            print(f"{db.engine.dialect.name}, {args.rows} predictions")
            print(bench_export(app, key, "jsonl", db))
            print(bench_export(app, key, "parquet", db))
            print(bench_erasure(app, key, db, ids))
        finally:
            db.dispose()
            if admin is not None:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()


if __name__ == "__main__":
    main()
