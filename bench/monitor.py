"""Monitoring benchmark: the SLA pass and the drift pass over many tenants, on SQLite and PostgreSQL.

    .venv/bin/python bench/monitor.py                       # 100 tenants x 10,000 predictions, SQLite
    .venv/bin/python bench/monitor.py --backends sqlite,postgresql \
        --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Each tenant gets ``--rows`` predictions spread over two weeks (so the 7-day SLA window and the reference window before
it hold about half each), 30% of them labeled. The SLA pass is ``run_monitoring(drift=False)`` over every SLA (SQL
aggregation, metric + interval + CBPE + ECE, evaluation rows and alerts committed). The drift pass runs
``check_drift`` (read the windows from SQL, sample, Evidently, store the snapshot) for ``--drift-tenants`` tenants,
next to a bare Evidently ``Report.run`` on the very same frames (reading the frames and serializing the snapshot
are also timed apart). Text embeddings are off here (embedding 1M texts
is the encoder's cost, measured elsewhere; the drift pass uses the cache for texts it has seen).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.core.migrate import upgrade
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.slas import Sla
from flywheel.monitoring import drift as drift_mod
from flywheel.monitoring.frames import load_drift_inputs
from flywheel.monitoring.jobs import check_drift, run_monitoring
from flywheel.scheduler import freeze_loaded_libraries

LABELS = [f"intent_{i}" for i in range(10)]
COLUMNS = [
    "tenant_id", "task_id", "client_id", "text", "label", "confidence", "model_version",
    "created_at", "received_at", "content_hash", "bucket", "effective_label", "label_discarded", "feedback_count",
]  # fmt: skip


def generate(tenant_id: int, task_id: int, n: int, now: Any, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    accuracy = 0.80 + 0.18 * rng.random()  # some tenants breach 0.9, some meet it
    pred = rng.integers(0, len(LABELS), n)
    correct = rng.random(n) < accuracy
    truth = np.where(correct, pred, (pred + rng.integers(1, len(LABELS), n)) % len(LABELS))
    is_labeled = rng.random(n) < 0.3
    conf = np.clip(rng.normal(accuracy, 0.08, n), 0.05, 1.0)
    age_s = rng.uniform(0, 14 * 86400, n)
    lengths = rng.integers(10, 120, n)
    rows = []
    for i in range(n):
        cid = f"t{tenant_id}-{i}"
        rows.append(
            {
                "tenant_id": tenant_id,
                "task_id": task_id,
                "client_id": cid,
                "text": "x" * int(lengths[i]),
                "label": LABELS[pred[i]],
                "confidence": float(conf[i]),
                "model_version": "v1",
                "created_at": now - timedelta(seconds=float(age_s[i])),
                "received_at": now,
                "content_hash": hashlib.md5(cid.encode()).hexdigest(),
                "bucket": i % 100,
                "effective_label": LABELS[truth[i]] if is_labeled[i] else None,
                "label_discarded": False,
                "feedback_count": int(is_labeled[i]),
            }
        )
    return rows


def copy_rows(db: Database, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY (the bulk path); SQLite gets one executemany in one transaction."""
    if db.is_sqlite:
        with db.session() as session:
            session.execute(insert(Prediction.__table__), rows)  # type: ignore[arg-type]
        return
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cols = ", ".join(c if c != "metadata_" else "metadata" for c in COLUMNS)
        with cur.copy(f"COPY predictions ({cols}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for r in rows:
                copy.write_row([r[c] for c in COLUMNS])
        raw.commit()
    finally:
        raw.close()


def populate(db: Database, tenants: int, rows: int, now: Any) -> None:
    with db.session() as session:
        task = Task(name="bench", labels=LABELS, label_descriptions={}, description="")
        session.add(task)
        session.flush()
        for t in range(tenants):
            tenant = Tenant(slug=f"tenant-{t:03d}", name=f"Tenant {t}")
            session.add(tenant)
            session.flush()
            metric = "macro_f1" if t % 10 == 0 else "accuracy"
            session.add(
                Sla(
                    tenant_id=tenant.id,
                    task_id=task.id,
                    metric=metric,
                    threshold=0.9,
                    window_days=7,
                    min_labeled=200,
                    warning_margin=0.02,
                    version=1,
                )
            )
        task_id = task.id
        tenant_ids = list(session.scalars(select(Tenant.id).order_by(Tenant.id)))
    for tenant_id in tenant_ids:
        copy_rows(db, generate(tenant_id, task_id, rows, now, seed=tenant_id))
    if not db.is_sqlite:
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE predictions"))


def open_backend(name: str, pg_url: str | None, workdir: Path) -> tuple[Database, Any]:
    if name == "sqlite":
        db = Database(f"sqlite:///{workdir / 'bench.db'}")
        upgrade(db.engine)
        return db, None
    assert pg_url, "--pg-url is required for postgresql"
    dbname = f"flywheel_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    db = Database(make_url(pg_url).set(database=dbname).render_as_string(hide_password=False))
    upgrade(db.engine)

    def drop() -> None:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        admin.dispose()

    return db, drop


def bare_report_seconds(db: Database, settings: Settings, sla_id: int, now: Any) -> tuple[float, float, float]:
    """Evidently alone: the same pandas frames ``check_drift`` builds, already in memory, through the same Report
    (``Dataset.from_pandas`` with the same definition, then ``Report.run``). Also returns, timed apart, the two
    parts of ``check_drift`` around it: reading the frames from SQL, and serializing + compressing the snapshot."""
    started = time.perf_counter()
    with db.session() as session:
        sla = session.get(Sla, sla_id)
        assert sla is not None
        inputs = load_drift_inputs(session, sla, settings, now=now)
    read_s = time.perf_counter() - started
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        report = drift_mod.build_report(with_embeddings=False)
        cur, ref = drift_mod.datasets(inputs.reference, inputs.current)
        snapshot = report.run(cur, ref)
        bare_s = time.perf_counter() - started
    started = time.perf_counter()
    drift_mod.compress_snapshot(drift_mod.dump_snapshot(snapshot))
    return bare_s, read_s, time.perf_counter() - started


def bench_backend(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    db, cleanup = open_backend(name, args.pg_url, workdir)
    try:
        settings = Settings(database_url=db.url, drift_text_embeddings=False, drift_sample_cap=args.sample_cap)
        now = utcnow()
        started = time.perf_counter()
        populate(db, args.tenants, args.rows, now)
        load_s = time.perf_counter() - started
        sla_times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = run_monitoring(db, settings, now=now, drift=False, deliver=False)
            sla_times.append(time.perf_counter() - started)
            assert result["evaluated"] == args.tenants, result
        with db.session() as session:
            sla_ids = list(session.scalars(select(Sla.id).order_by(Sla.id)))[: args.drift_tenants]
        bare_report_seconds(db, settings, sla_ids[0], now)  # warm-up: imports and first-call caches, not timed
        freeze_loaded_libraries()  # as the `flywheel scheduler` process does at start
        ours, bare, read, store = [], [], [], []
        for sla_id in sla_ids:
            bare_s, read_s, store_s = bare_report_seconds(db, settings, sla_id, now)
            bare.append(bare_s)
            read.append(read_s)
            store.append(store_s)
            started = time.perf_counter()
            check_drift(db, settings, sla_id, now=now)
            ours.append(time.perf_counter() - started)
        return {
            "backend": name,
            "rows": args.tenants * args.rows,
            "load_s": load_s,
            "sla_s": min(sla_times),
            "statuses": result["statuses"],
            "drift_n": len(sla_ids),
            "drift_s": sum(ours),
            "bare_s": sum(bare),
            "drift_median": statistics.median(ours),
            "bare_median": statistics.median(bare),
            "ratio_median": statistics.median(o / b for o, b in zip(ours, bare, strict=True)),
            "read_median": statistics.median(read),
            "store_median": statistics.median(store),
        }
    finally:
        if cleanup is not None:
            cleanup()
        else:
            db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10_000, help="predictions per tenant")
    parser.add_argument("--backends", default="sqlite", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--pg-url", default=os.environ.get("FLYWHEEL_BENCH_PG_URL"))
    parser.add_argument("--drift-tenants", type=int, default=20, help="tenants in the drift pass")
    parser.add_argument("--sample-cap", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=2, help="SLA passes; the best is reported")
    args = parser.parse_args()
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_backend(b.strip(), args, Path(tmp)) for b in args.backends.split(",") if b.strip()]
    print(f"monitoring benchmark: {args.tenants} tenants x {args.rows:,} predictions (30% labeled, 14 days)", file=out)
    print(
        f"{'backend':<11}{'rows':>11}{'load s':>9}{'SLA pass s':>12}{'drift n':>9}{'drift s':>9}"
        f"{'bare Evidently s':>18}{'ratio':>8}{'median/tenant ours|bare':>26}{'median ratio':>14}",
        file=out,
    )
    for r in results:
        print(
            f"{r['backend']:<11}{r['rows']:>11,}{r['load_s']:>9.1f}{r['sla_s']:>12.2f}{r['drift_n']:>9}"
            f"{r['drift_s']:>9.2f}{r['bare_s']:>18.2f}{r['drift_s'] / r['bare_s']:>8.2f}"
            f"{r['drift_median']:>14.3f} | {r['bare_median']:.3f}{r['ratio_median']:>14.2f}",
            file=out,
        )
        print(
            f"{'':<11}statuses: {r['statuses']}; drift, median per tenant: read both windows from SQL "
            f"{r['read_median'] * 1000:.0f} ms, serialize + compress the snapshot {r['store_median'] * 1000:.1f} ms",
            file=out,
        )
    print("targets: SLA pass < 5 s for 1M rows; drift <= 1.2x the bare Evidently Report.run", file=out)
    sys.stdout.write(out.getvalue())


if __name__ == "__main__":
    main()
