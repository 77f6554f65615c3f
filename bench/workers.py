"""The nightly fan-out on Celery workers: 1 worker process against 2, and Celery's dispatch overhead.

    .venv/bin/python bench/workers.py [--scopes 40] [--per-class 6] [--database-url postgresql+psycopg://…]

Each scope is one tenant on its own banking77 task (77 intents, ``--per-class`` labels each, the same texts for
every scope, so their MiniLM embeddings come from the cache after the first). Tonight's work per scope is the
label-quality pass and a few-shot training run (real all-MiniLM-L6-v2). Three arms, each on a fresh database:

- ``direct``: the job functions called one after another in this process (no broker): the baseline;
- ``celery x1``: the scheduler's nightly dispatch (a chord of label-quality tasks, then one training message per
  scope) consumed by one ``flywheel worker`` process;
- ``celery x2``: the same consumed by two worker processes.

Printed: wall time of each arm, throughput of x2 against x1 (target >= 1.7x on 2 cores), and Celery's overhead per
job, (x1 - direct) / jobs, against the median job (target <= 5%).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77"
BROKER = "redis://127.0.0.1:6379/13"


def read_rows(per_class: int) -> tuple[list[str], list[tuple[str, str]]]:
    with (DATA / "train.csv").open(newline="", encoding="utf-8") as fh:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(fh)]
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label in rows:
        by_label[label].append(text)
    labels = sorted(by_label)
    return labels, [(t, y) for y in labels for t in by_label[y][:per_class]]


def fresh_database(base_url: str, tmp: Path, arm: str) -> str:
    if base_url.startswith("sqlite"):
        return f"sqlite:///{tmp / f'{arm}.db'}"
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"flywheel_workers_{os.getpid()}_{arm}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def drop_database(base_url: str, url: str) -> None:
    if base_url.startswith("sqlite"):
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def seed(settings: Any, scopes: int, labels: list[str], rows: list[tuple[str, str]]) -> None:
    """``scopes`` tenants, each on its own task, each with every row logged and labeled; embeddings cached."""
    from flywheel.core.db import Database
    from flywheel.core.migrate import upgrade
    from flywheel.domain.ingest import ingest_feedback, ingest_predictions
    from flywheel.domain.schemas import FeedbackIn, PredictionIn
    from flywheel.models.records import Task, Tenant
    from flywheel.retrain.dataset import embeddings_for
    from flywheel.retrain.registry import ensure_zero_shot

    db = Database(settings.database_url)
    upgrade(db.engine)
    for i in range(scopes):
        with db.session() as session:
            tenant = Tenant(slug=f"tenant-{i:02d}", name=f"Tenant {i}")
            task = Task(name=f"intents-{i:02d}", labels=labels, label_descriptions={}, description="")
            session.add_all([tenant, task])
            session.flush()
            ensure_zero_shot(session, task, settings)
            ids = [f"p{i}-{k}" for k in range(len(rows))]
            ingest_predictions(
                session,
                tenant.id,
                [
                    PredictionIn(id=pid, task=task.name, text=text, label=labels[0], confidence=0.5)
                    for pid, (text, _) in zip(ids, rows, strict=True)
                ],
            )
            ingest_feedback(
                session,
                tenant.id,
                [
                    FeedbackIn(id=f"f-{pid}", prediction_id=pid, label=y, source="agent", source_id="a1")
                    for pid, (_, y) in zip(ids, rows, strict=True)
                ],
            )
    embeddings_for(db, [t for t, _ in rows], None)  # the cache: every scope's texts are embedded once
    db.dispose()


def wait_runs_done(settings: Any, expected: int, timeout: float) -> list[float]:
    """Wait until ``expected`` training runs are finished; their job seconds (started -> finished)."""
    from sqlalchemy import select

    from flywheel.core.db import Database
    from flywheel.models.training import TrainingRun

    db = Database(settings.database_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with db.session() as session:
                runs = list(session.scalars(select(TrainingRun)))
                done = [r for r in runs if r.status in ("succeeded", "rejected", "failed")]
                if len(done) >= expected:
                    failed = [r.error for r in done if r.status == "failed"]
                    if failed:
                        raise SystemExit(f"training runs failed: {failed[:3]}")
                    return [(r.finished_at - r.started_at).total_seconds() for r in done if r.started_at]
            time.sleep(0.25)
    finally:
        db.dispose()
    raise SystemExit(f"timed out waiting for {expected} runs")


def lq_seconds(settings: Any) -> list[float]:
    from sqlalchemy import select

    from flywheel.core.db import Database
    from flywheel.models.label_quality import LabelQualityRun

    db = Database(settings.database_url)
    with db.session() as session:
        out = [
            (r.finished_at - r.started_at).total_seconds()
            for r in session.scalars(select(LabelQualityRun))
            if r.finished_at and r.started_at
        ]
    db.dispose()
    return out


def arm_direct(settings: Any, scopes: int) -> tuple[float, list[float]]:
    """The job functions one after another: the label-quality passes, then every queued run. Set up as a worker
    process is (one torch and BLAS thread, the encoder loaded before the clock starts), so that the difference to
    one Celery worker is the dispatch alone."""
    import torch
    from threadpoolctl import threadpool_limits

    from flywheel.core.db import Database
    from flywheel.feedback.jobs import label_quality_pass
    from flywheel.retrain.jobs import nightly_retrain, run_training
    from flywheel.worker import warm_up

    torch.set_num_threads(1)
    warm_up(settings)
    db = Database(settings.database_url)
    with threadpool_limits(limits=1):
        started = time.perf_counter()
        label_quality_pass(db, settings)
        for run_id in nightly_retrain(db, settings):
            run_training(db, settings, run_id)
        wall = time.perf_counter() - started
    db.dispose()
    jobs = lq_seconds(settings) + wait_runs_done(settings, scopes, 60)
    return wall, jobs


def arm_celery(settings: Any, scopes: int, workers: int, tmp: Path) -> tuple[float, list[float]]:
    """The scheduler's nightly dispatch, consumed by ``workers`` worker processes."""
    import redis

    from flywheel.core.db import Database
    from flywheel.worker import dispatch_nightly, make_celery

    redis.Redis.from_url(settings.broker_url).flushdb()
    env = dict(
        os.environ,
        FLYWHEEL_DATABASE_URL=settings.database_url,
        FLYWHEEL_BROKER_URL=settings.broker_url,
        FLYWHEEL_ARTIFACTS_DIR=str(settings.artifacts_dir),
        FLYWHEEL_FINE_TUNE_MIN_LABELS=str(settings.fine_tune_min_labels),
        OMP_NUM_THREADS="1",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "from flywheel.cli import main; main()", "worker", "--queues=cpu"],
            env=env,
            stdout=(tmp / f"worker-{workers}-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i in range(workers)
    ]
    db = Database(settings.database_url)
    try:
        deadline = time.monotonic() + 300  # the worker processes load torch and the encoder before the clock starts
        while (
            time.monotonic() < deadline
            and sum(
                (tmp / f"worker-{workers}-{i}.log").read_text(errors="replace").count("is warm") for i in range(workers)
            )
            < workers
        ):
            time.sleep(0.5)
        app = make_celery(settings)
        started = time.perf_counter()
        dispatch_nightly(db, settings, app)
        jobs = wait_runs_done(settings, scopes, 3600)
        wall = time.perf_counter() - started
        return wall, lq_seconds(settings) + jobs
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scopes", type=int, default=40)
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--broker-url", default=BROKER)
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: this benchmark needs ../shared/data")

    from flywheel.core.config import Settings

    labels, rows = read_rows(args.per_class)
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-workers-"))
    results: dict[str, tuple[float, list[float]]] = {}
    for arm in ("direct", "celery x1", "celery x2"):
        url = fresh_database(args.database_url, tmp, arm.replace(" ", ""))
        settings = Settings(
            database_url=url,
            artifacts_dir=tmp / arm.replace(" ", "") / "artifacts",
            broker_url=args.broker_url,
            fine_tune_min_labels=10**9,  # the few-shot rung: this measures dispatch, not fine-tuning
        )
        try:
            seed(settings, args.scopes, labels, rows)
            if arm == "direct":
                results[arm] = arm_direct(settings.with_(broker_url=""), args.scopes)
            else:
                results[arm] = arm_celery(settings, args.scopes, int(arm[-1]), tmp)
        finally:
            drop_database(args.database_url, url)
        wall, jobs = results[arm]
        print(f"{arm:10s} {wall:8.1f} s  {len(jobs)} jobs, median {statistics.median(jobs):.2f} s", flush=True)

    direct, one, two = results["direct"], results["celery x1"], results["celery x2"]
    n_jobs = len(direct[1])
    median_job = statistics.median(direct[1])
    overhead = (one[0] - direct[0]) / n_jobs
    print()
    print(
        "| scopes | jobs | direct | 1 worker | 2 workers | 2 vs 1 | Celery overhead per job "
        f"(median job {median_job:.2f} s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {args.scopes} | {n_jobs} | {direct[0]:.1f} s | {one[0]:.1f} s | {two[0]:.1f} s "
        f"| **{one[0] / two[0]:.2f}x** | {overhead * 1000:.0f} ms = **{overhead / median_job:.1%}** |"
    )


if __name__ == "__main__":
    main()
