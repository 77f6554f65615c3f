"""Dashboard page latency on a big database against a small one, side by side.

    .venv/bin/python bench/dashboard.py                                   # 100 tenants × 1M predictions vs 10k
    .venv/bin/python bench/dashboard.py --predictions 200000 --repeat 3   # quicker
    .venv/bin/python bench/dashboard.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench

Both databases get the same tenants, task, SLA evaluations and models; only the number of predictions differs.
Each page is requested ``--repeat`` times through the Flask test client (signed in as admin; the first request
warms caches and is not counted) and the median is printed. A ratio near 1 means the page's cost does not grow
with the number of predictions: its aggregates run in SQL on the (tenant, task, created_at) index.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from flywheel.app import create_app
from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.core.migrate import upgrade
from flywheel.domain.auth import create_key
from flywheel.models.records import Prediction, Task, Tenant

LABELS = [f"intent_{i:02d}" for i in range(20)]


def seed(db: Database, *, tenants: int, predictions: int, days: int = 30) -> str:
    """Tenants, one task, ``predictions`` spread evenly over tenants and the last ``days`` days; the admin key."""
    rng = random.Random(0)
    now = datetime.now(UTC).replace(microsecond=0)
    with db.session() as session:
        task = Task(name="intent", labels=LABELS, label_descriptions={}, description="")
        rows = [Tenant(slug=f"tenant-{i:03d}", name=f"Tenant {i:03d}") for i in range(tenants)]
        session.add_all([task, *rows])
        session.flush()
        key = create_key(session, tenant=None, scopes=["admin"])[1]
        task_id, tenant_ids = task.id, [t.id for t in rows]
    per_tenant = predictions // tenants
    step = timedelta(days=days) / max(per_tenant, 1)
    batch: list[dict[str, Any]] = []
    with db.engine.begin() as conn:
        for t_index, tenant_id in enumerate(tenant_ids):
            for i in range(per_tenant):
                label = LABELS[rng.randrange(len(LABELS))]
                labeled = rng.random() < 0.3
                client_id = f"t{t_index}-{i}"
                batch.append(
                    {
                        "tenant_id": tenant_id,
                        "task_id": task_id,
                        "client_id": client_id,
                        "text": f"request {i} of tenant {t_index}",
                        "label": label,
                        "confidence": rng.random(),
                        "probabilities": None,
                        "model_version": "m1",
                        "metadata": None,
                        "created_at": now - timedelta(days=days) + step * i,
                        "received_at": now,
                        "content_hash": hashlib.sha256(client_id.encode()).hexdigest(),
                        "bucket": i % 100,
                        "effective_label": (label if rng.random() < 0.85 else LABELS[0]) if labeled else None,
                        "label_discarded": False,
                        "feedback_count": int(labeled),
                    }
                )
                if len(batch) >= 20_000:
                    conn.execute(insert(Prediction.__table__), batch)
                    batch.clear()
        if batch:
            conn.execute(insert(Prediction.__table__), batch)
        seed_evaluations(conn, tenant_ids, task_id, now=now, days=days, rng=rng)
        conn.execute(text("ANALYZE"))
    return key


def seed_evaluations(
    conn: Any, tenant_ids: list[int], task_id: int, *, now: datetime, days: int, rng: random.Random
) -> None:
    """One SLA per tenant and an hourly evaluation history (what the monitoring job leaves behind)."""
    from flywheel.models.slas import Sla, SlaEvaluation

    conn.execute(
        insert(Sla.__table__),
        [
            {
                "tenant_id": t,
                "task_id": task_id,
                "metric": "accuracy",
                "threshold": 0.85,
                "window_days": 7,
                "min_labeled": 200,
                "warning_margin": 0.02,
                "version": 1,
                "created_at": now,
                "updated_at": now,
            }
            for t in tenant_ids
        ],
    )
    sla_ids = dict(conn.execute(text("SELECT tenant_id, id FROM slas")).all())
    statuses = ["met", "at_risk", "breached", "insufficient_data"]
    rows = []
    for t in tenant_ids:
        for h in range(days * 24):
            value = 0.85 + rng.uniform(-0.08, 0.08)
            at = now - timedelta(hours=days * 24 - h)
            rows.append(
                {
                    "sla_id": sla_ids[t],
                    "tenant_id": t,
                    "task_id": task_id,
                    "sla_version": 1,
                    "metric": "accuracy",
                    "threshold": 0.85,
                    "window_days": 7,
                    "window_start": at - timedelta(days=7),
                    "window_end": at,
                    "value": value,
                    "ci_low": value - 0.03,
                    "ci_high": value + 0.03,
                    "n_labeled": 3000,
                    "n_predictions": 10000,
                    "coverage": 0.3,
                    "estimated_value": value + 0.01,
                    "estimated_accuracy": value + 0.01,
                    "calibration_error": 0.05,
                    "status": statuses[rng.randrange(4)],
                    "drift_status": "none",
                    "evaluated_at": at,
                }
            )
    conn.execute(insert(SlaEvaluation.__table__), rows)


def time_pages(db: Database, key: str, *, repeat: int, tmp: Path, tenant: str) -> dict[str, float]:
    app = create_app(
        Settings(database_url=db.url, artifacts_dir=tmp / "artifacts", secret_key="bench", log_level="WARNING"), db=db
    )
    client = app.test_client()
    page = client.get("/dashboard/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    client.post("/dashboard/login", data={"api_key": key, "csrf_token": token.group(1)})
    pages = {
        "login (baseline)": "/dashboard/login",
        "overview": "/dashboard/",
        "tenant page": f"/dashboard/tenants/{tenant}",
        "review queue": f"/dashboard/tenants/{tenant}/review",
        "models": "/dashboard/models",
        "report (30 days)": f"/dashboard/tenants/{tenant}/report",
        "report CSV": f"/dashboard/tenants/{tenant}/report.csv",
    }
    out = {}
    for name, path in pages.items():
        r = client.get(path)
        assert r.status_code in (200, 302), (path, r.status_code)
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = client.get(path)
            r.get_data()
            samples.append(time.perf_counter() - t0)
        out[name] = statistics.median(samples) * 1000
    return out


def build(url: str | None, tmp: Path, name: str, *, tenants: int, predictions: int) -> tuple[Database, str, float]:
    if url is None:
        db = Database(f"sqlite:///{tmp / (name + '.db')}")
    else:
        base = make_url(url)
        database = f"{base.database}_{name}"
        server = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{database}"'))
        server.dispose()
        db = Database(base.set(database=database).render_as_string(hide_password=False))
    upgrade(db.engine)
    t0 = time.perf_counter()
    key = seed(db, tenants=tenants, predictions=predictions)
    return db, key, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--baseline-predictions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default=None, help="a PostgreSQL URL (databases <name>_small/_big)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        small, small_key, _ = build(
            args.database_url, tmp, "small", tenants=args.tenants, predictions=args.baseline_predictions
        )
        big, big_key, seed_s = build(args.database_url, tmp, "big", tenants=args.tenants, predictions=args.predictions)
        backend = "PostgreSQL" if args.database_url else "SQLite"
        print(f"{backend}: seeded {args.predictions:,} predictions over {args.tenants} tenants in {seed_s:.1f} s")
        base = time_pages(small, small_key, repeat=args.repeat, tmp=tmp, tenant=f"tenant-{args.tenants // 2:03d}")
        large = time_pages(big, big_key, repeat=args.repeat, tmp=tmp, tenant=f"tenant-{args.tenants // 2:03d}")
        print(
            f"| page | {args.baseline_predictions:,} predictions (ms) | {args.predictions:,} predictions (ms) | ratio |"
        )
        print("| --- | ---: | ---: | ---: |")
        for name in base:
            print(f"| {name} | {base[name]:.1f} | {large[name]:.1f} | {large[name] / base[name]:.2f} |")
        small.dispose()
        big.dispose()


if __name__ == "__main__":
    main()
