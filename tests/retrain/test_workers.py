"""Scale-out through real Celery workers: ``flywheel worker`` subprocesses on a real Redis broker and the test's
database (SQLite file, or PostgreSQL when configured). The database row is the record; a message only a nudge."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.domain import champions
from flywheel.models.records import Task, Tenant
from flywheel.models.training import ModelVersion, TrainingRun, WorkerProcess
from flywheel.retrain import jobs
from flywheel.worker import QUEUE_GPU, TASK_TRAIN, dispatch_queued_runs, make_celery

from support import wait_for
from support.retrain import LABELS, TASK, add_labeled, make_task

pytestmark = pytest.mark.slow

BROKER = os.environ.get("FLYWHEEL_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A real Redis, emptied before each test. Outside CI an absent Redis skips the test; under CI it fails."""
    import redis

    client = redis.Redis.from_url(BROKER)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {BROKER}: {exc}")
        pytest.skip(f"Redis is not reachable at {BROKER} (start it with: redis-server --daemonize yes)")
    client.flushdb()
    yield BROKER
    client.flushdb()
    client.close()


class Workers:
    """``flywheel worker`` subprocesses on the test's database, broker and tiny base."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        s = self.settings
        return dict(
            os.environ,
            FLYWHEEL_DATABASE_URL=s.database_url,
            FLYWHEEL_BROKER_URL=s.broker_url,
            FLYWHEEL_ARTIFACTS_DIR=str(s.artifacts_dir),
            FLYWHEEL_BASE_MODEL=s.base_model,
            FLYWHEEL_HOLDOUT_PERCENT=str(s.holdout_percent),
            FLYWHEEL_FEW_SHOT_MIN_PER_CLASS=str(s.few_shot_min_per_class),
            FLYWHEEL_FINE_TUNE_MIN_LABELS=str(s.fine_tune_min_labels),
            FLYWHEEL_FINE_TUNE_EPOCHS=str(s.fine_tune_epochs),
            FLYWHEEL_RUN_STALE_SECONDS=str(s.run_stale_seconds),
            FLYWHEEL_WORKER_HEARTBEAT_SECONDS=str(s.worker_heartbeat_seconds),
            FLYWHEEL_GATE_TOLERANCE=str(s.gate_tolerance),
            OMP_NUM_THREADS="1",
        )

    def start(self, *, queues: str = "cpu") -> subprocess.Popen[bytes]:
        log = (self.tmp / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-c", "from flywheel.cli import main; main()", "worker", f"--queues={queues}"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # kill -9 of the group takes the pool child too
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("worker-*.log")))


@pytest.fixture
def ws(settings: Settings, broker_url: str, tiny_base: Path, db: Database, tmp_path: Path) -> Iterator[Settings]:
    """Settings for the workers: few-shot runs on the tiny base, fast heartbeats, and a gate that any candidate
    passes (these tests are about dispatch; on their 10-item holdouts the paired interval proves nothing, and
    the gate's rules have tests of their own in test_gate.py)."""
    if os.environ.get("FLYWHEEL_TEST_DATABASE_URL") and db.engine.dialect.name == "sqlite":
        pytest.skip("worker processes are slow to start: with PostgreSQL configured they run once, on PostgreSQL")
    yield settings.with_(
        broker_url=broker_url,
        base_model=str(tiny_base),
        holdout_percent=20,
        few_shot_min_per_class=2,
        fine_tune_min_labels=100_000,
        fine_tune_epochs=2,
        run_stale_seconds=600,
        worker_heartbeat_seconds=1,
        dispatch_resend_seconds=3600,
        gate_tolerance=1.0,
    )


@pytest.fixture
def workers(ws: Settings, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(ws, tmp_path)
    yield pool
    pool.stop()


def registered(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(WorkerProcess)) or 0)


def queue_runs(db: Database, tenants: list[str | None], task_name: str = TASK) -> list[int]:
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == task_name))
        assert task is not None
        out = []
        for slug in tenants:
            tenant = session.scalar(select(Tenant).where(Tenant.slug == slug)) if slug else None
            out.append(jobs.queue_run(session, task, tenant, trigger="test").id)
        return out


def run_row(db: Database, run_id: int) -> TrainingRun:
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        session.expunge(run)
        return run


def models_of(db: Database, run_id: int) -> int:
    with db.session() as session:
        return int(
            session.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.training_run_id == run_id))
            or 0
        )


def finished(db: Database, run_ids: list[int]) -> Callable[[], bool]:
    return lambda: all(run_row(db, r).status in ("succeeded", "failed", "rejected") for r in run_ids)


def make_tasks(db: Database, base: Path, n: int) -> list[str]:
    """``n`` tasks on the tiny base, each with labels enough for a few-shot head."""
    make_task(db, base)
    add_labeled(db, "acme", 60, seed=1)
    names = [TASK]
    for i in range(1, n):
        name = f"{TASK}-{i}"
        with db.session() as session:
            session.add(Task(name=name, labels=LABELS, label_descriptions={}, description="", base_model=str(base)))
        names.append(name)
    return names


def test_a_queued_run_is_claimed_trained_and_gated_by_a_worker_once(
    db: Database, ws: Settings, tiny_base: Path, workers: Workers
) -> None:
    make_task(db, tiny_base)
    add_labeled(db, "acme", 60, seed=1)
    [run_id] = queue_runs(db, [None])
    workers.start()
    assert wait_for(lambda: registered(db) == 1, timeout=180), workers.logs()
    app = make_celery(ws)
    assert dispatch_queued_runs(db, ws, app) == [run_id]
    assert dispatch_queued_runs(db, ws, app) == []  # sent once: the row records the dispatch
    app.send_task(TASK_TRAIN, args=(run_id,), queue="cpu")  # the same message delivered a second time
    assert wait_for(finished(db, [run_id]), timeout=300), workers.logs()
    run = run_row(db, run_id)
    assert run.status == "succeeded", (run.error, workers.logs())
    assert run.rung == "few_shot" and run.attempts == 1
    assert run.host and run.pid and run.pid != os.getpid()  # executed by the worker's process
    import redis

    queue = redis.Redis.from_url(ws.broker_url)
    assert wait_for(lambda: queue.llen("cpu") == 0, timeout=60)  # the duplicate message was taken ...
    time.sleep(0.5)  # ... and handled (acked late): it must not have trained a second time
    assert models_of(db, run_id) == 1
    assert run_row(db, run_id).attempts == 1
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        champion = champions.champion_for(session, task.id, None)
        assert champion is not None and champion.training_run_id == run_id


def test_two_workers_share_one_queue(db: Database, ws: Settings, tiny_base: Path, workers: Workers) -> None:
    names = make_tasks(db, tiny_base, 8)
    run_ids = [queue_runs(db, [None], name)[0] for name in names]
    workers.start()
    workers.start()
    assert wait_for(lambda: registered(db) == 2, timeout=180), workers.logs()
    dispatch_queued_runs(db, ws, make_celery(ws))
    assert wait_for(finished(db, run_ids), timeout=300), workers.logs()
    runs = [run_row(db, r) for r in run_ids]
    assert {r.status for r in runs} <= {"succeeded", "rejected"}, [(r.status, r.error) for r in runs]
    executors = {(r.host, r.pid) for r in runs}
    assert len(executors) == 2, f"all 8 runs went to {executors}"  # both workers took runs


def test_a_worker_killed_mid_run_is_requeued_and_finished_once_by_another(
    db: Database, ws: Settings, tiny_base: Path, workers: Workers
) -> None:
    make_task(db, tiny_base)
    add_labeled(db, "acme", 600, seed=1)
    [run_id] = queue_runs(db, [None])
    first = workers.start()
    assert wait_for(lambda: registered(db) == 1, timeout=180), workers.logs()
    app = make_celery(ws)
    dispatch_queued_runs(db, ws, app)
    assert wait_for(lambda: run_row(db, run_id).status == "running", timeout=180), workers.logs()
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        before = champions.champion_for(session, task.id, None)
        assert before is not None
        before_id = before.id
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    # The scheduler's poll: the dead process's run is queued again (attempt 2) and nudged once more.
    assert wait_for(lambda: jobs.recover_stale_runs(db, ws) == [run_id] or run_row(db, run_id).status == "queued")
    run = run_row(db, run_id)
    assert run.status == "queued" and run.attempts == 1
    with db.session() as session:
        assert champions.champion_for(session, task.id, None).id == before_id  # type: ignore[union-attr]
    workers.start()
    assert dispatch_queued_runs(db, ws, app) == [run_id]
    assert wait_for(finished(db, [run_id]), timeout=300), workers.logs()
    run = run_row(db, run_id)
    assert run.status == "succeeded", (run.error, workers.logs())
    assert run.attempts == 2
    assert models_of(db, run_id) == 1  # exactly one model version for the run


def test_without_a_gpu_worker_no_fine_tune_is_queued_and_the_run_says_why(
    db: Database, ws: Settings, tiny_base: Path, workers: Workers
) -> None:
    workers.settings = ws.with_(fine_tune_min_labels=40)  # enough labels for the fine-tuned rung
    make_task(db, tiny_base)
    add_labeled(db, "acme", 60, seed=1)
    [run_id] = queue_runs(db, [None])
    workers.start()
    assert wait_for(lambda: registered(db) == 1, timeout=180), workers.logs()
    dispatch_queued_runs(db, ws, make_celery(ws))
    assert wait_for(finished(db, [run_id]), timeout=300), workers.logs()
    run = run_row(db, run_id)
    assert run.status == "succeeded" and run.rung == "few_shot", (run.error, workers.logs())
    assert any("gpu" in r.lower() for r in run.reasons), run.reasons
    with db.session() as session:
        assert not session.scalar(select(func.count()).select_from(TrainingRun).where(TrainingRun.queue == QUEUE_GPU))


def test_the_nightly_fan_out_runs_a_pass_per_scope_then_a_run_per_scope(
    db: Database, ws: Settings, tiny_base: Path, workers: Workers
) -> None:
    from flywheel.models.label_quality import LabelQualityRun
    from flywheel.worker import dispatch_nightly

    make_task(db, tiny_base)
    add_labeled(db, "acme", 40, seed=1)
    add_labeled(db, "globex", 40, seed=2)
    workers.start()
    assert wait_for(lambda: registered(db) == 1, timeout=180), workers.logs()
    assert dispatch_nightly(db, ws, make_celery(ws)) == 2  # acme and globex: one label-quality task each

    def runs() -> list[TrainingRun]:
        with db.session() as session:
            found = list(session.scalars(select(TrainingRun)))
            session.expunge_all()
            return found

    assert wait_for(lambda: bool(runs()) and all(r.status not in ("queued", "running") for r in runs()), timeout=300), (
        workers.logs()
    )
    first_run = min(r.created_at for r in runs())
    with db.session() as session:
        passes = list(session.scalars(select(LabelQualityRun)))
        slugs = dict(session.execute(select(Tenant.id, Tenant.slug)).tuples().all())
        assert {slugs[p.tenant_id] for p in passes} == {"acme", "globex"}
        assert all(p.finished_at is not None and p.finished_at <= first_run for p in passes)  # passes first
    [shared] = runs()  # the task's shared model (no tenant has labels enough for a variant)
    assert shared.status == "succeeded" and shared.tenant_id is None and shared.trigger == "nightly"
