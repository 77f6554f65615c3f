"""The scheduler: one active process (a database lease), once-per-fire jobs, the queue, `flywheel scheduler`."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.models.records import Task
from flywheel.models.training import JobLock, TrainingRun
from flywheel.retrain import jobs
from flywheel.scheduler import (
    JOB_NIGHTLY,
    LEADER_LOCK,
    SchedulerService,
    acquire_lease,
    last_fire_time,
    lease_holder,
    run_once,
    select_job_runs,
)

from support import wait_for
from support.retrain import TASK, make_task

pytestmark = pytest.mark.slow


@pytest.fixture
def quiet(settings: Settings) -> Settings:
    """Only what a test fires itself: no early-retrain checks, a fast queue poll."""
    return settings.with_(early_retrain_check_seconds=3600, training_poll_seconds=0.3, fine_tune_min_labels=100_000)


def test_lease_is_exclusive_renewable_and_expires(db: Database) -> None:
    now = utcnow()
    assert acquire_lease(db, "x", "a", 30, now=now)
    assert not acquire_lease(db, "x", "b", 30, now=now)
    assert acquire_lease(db, "x", "a", 30, now=now + timedelta(seconds=10))  # renewal
    assert not acquire_lease(db, "x", "b", 30, now=now + timedelta(seconds=35))  # renewed at +10: valid to +40
    assert acquire_lease(db, "x", "b", 30, now=now + timedelta(seconds=41))  # the holder died: taken over


def test_run_once_runs_a_fire_time_once_across_concurrent_callers(db: Database) -> None:
    calls: list[str] = []
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def worker(owner: str) -> None:
        other = Database(db.url)  # a process of its own, as far as the database is concerned
        barrier.wait()
        results.append(run_once(other, "job", "2026-11-27T02:00:00Z", owner, lambda: calls.append(owner)))
        other.dispose()

    threads = [threading.Thread(target=worker, args=(f"p{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(results) == [False, False, False, True]
    assert select_job_runs(db, "job") == [("2026-11-27T02:00:00Z", calls[0], "succeeded")]
    assert run_once(db, "job", "2026-11-28T02:00:00Z", "p9", lambda: calls.append("p9"))  # the next night runs


def test_last_fire_time_of_the_nightly_cron() -> None:
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab("0 2 * * *", timezone=UTC)
    now = utcnow().replace(hour=3, minute=30)
    assert last_fire_time(trigger, now) == now.replace(minute=0, second=0, microsecond=0, hour=2)
    early = now.replace(hour=1)
    assert last_fire_time(trigger, early) == (early - timedelta(days=1)).replace(
        hour=2, minute=0, second=0, microsecond=0
    )


def test_two_schedulers_started_together_run_the_nightly_job_once(
    db: Database, quiet: Settings, tiny_base: Path
) -> None:
    from apscheduler.triggers.date import DateTrigger

    make_task(db, tiny_base)
    fire_at = utcnow() + timedelta(seconds=2)
    services = [
        SchedulerService(Database(db.url), quiet, triggers={JOB_NIGHTLY: DateTrigger(run_date=fire_at, timezone=UTC)})
        for _ in range(2)
    ]
    for s in services:
        s.start()
    try:
        assert wait_for(lambda: any(s.leading.is_set() for s in services))
        leader = next(s for s in services if s.leading.is_set())
        assert lease_holder(db, LEADER_LOCK) == leader.owner
        assert wait_for(lambda: [r[2] for r in select_job_runs(db, JOB_NIGHTLY)] == ["succeeded"])
        # The nightly job queued the task's run and the leader's queue worker trained it.
        assert wait_for(lambda: _statuses(db) == ["succeeded"])
        time.sleep(1.0)  # give a (broken) second scheduler every chance to run it again
        assert [s.leading.is_set() for s in services].count(True) == 1
        runs = select_job_runs(db, JOB_NIGHTLY)
        assert len(runs) == 1 and runs[0][1] == leader.owner
        assert _statuses(db) == ["succeeded"]
    finally:
        for s in services:
            s.stop()


def _statuses(db: Database) -> list[str]:
    with db.session() as session:
        return [r.status for r in session.scalars(select(TrainingRun).order_by(TrainingRun.id))]


def test_a_standby_scheduler_takes_over_when_the_active_one_dies(
    db: Database, quiet: Settings, tiny_base: Path
) -> None:
    make_task(db, tiny_base)
    a = SchedulerService(Database(db.url), quiet, lease_ttl_s=6.0)
    a.start()
    assert wait_for(a.leading.is_set)
    b = SchedulerService(Database(db.url), quiet, lease_ttl_s=6.0)
    b.start()
    try:
        time.sleep(0.5)
        assert not b.leading.is_set()
        # "kill" a: its threads stop without releasing the lease, as after kill -9.
        a._stop.set()
        assert a._thread is not None
        a._thread.join()
        a._stop_scheduler()
        assert not b.leading.is_set()  # the dead scheduler's lease is still valid
        with db.session() as session:  # ... until it runs out (fast-forwarded here rather than waited for)
            session.execute(update(JobLock).values(expires_at=utcnow() - timedelta(seconds=1)))
        assert wait_for(b.leading.is_set)
        # The new active scheduler picks up queued runs within seconds.
        with db.session() as session:
            task = session.scalar(select(Task).where(Task.name == TASK))
            assert task is not None
            run_id = jobs.queue_run(session, task, None, trigger="api").id
        assert wait_for(lambda: _statuses(db) == ["succeeded"])
        with db.session() as session:
            run = session.get(TrainingRun, run_id)
            assert run is not None and run.pid == os.getpid() and run.decision == "skipped"
    finally:
        b.stop()
        a.stop()


def test_flywheel_scheduler_command_becomes_the_active_scheduler(db: Database, tmp_path: Path) -> None:
    from flywheel.scheduler import start_scheduler_process

    settings = Settings(database_url=db.url, artifacts_dir=tmp_path / "artifacts")
    proc = start_scheduler_process(settings)
    try:
        assert wait_for(lambda: (lease_holder(db, LEADER_LOCK) or "").split(":")[1:2] == [str(proc.pid)], timeout=120)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert lease_holder(db, LEADER_LOCK) is None  # released on a clean stop


def test_a_bad_cron_fails_at_start_up(db: Database, settings: Settings) -> None:
    with pytest.raises(ValueError):
        SchedulerService(db, settings.with_(retrain_cron="every night"))


def test_flywheel_up_runs_web_and_scheduler_together(tmp_path: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"sqlite:///{tmp_path / 'up.db'}"
    env = dict(
        os.environ,
        FLYWHEEL_DATABASE_URL=url,
        FLYWHEEL_PORT=str(port),
        FLYWHEEL_WORKERS="1",
        FLYWHEEL_ARTIFACTS_DIR=str(tmp_path / "artifacts"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", "from flywheel.cli import main; main()", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    db = Database(url)
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        assert wait_for(healthy, timeout=120)
        assert wait_for(lambda: lease_holder(db, LEADER_LOCK) is not None, timeout=120)
        scheduler_pid = int((lease_holder(db, LEADER_LOCK) or "").split(":")[1])
        assert scheduler_pid != proc.pid  # its own process, not a web worker
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert wait_for(lambda: lease_holder(db, LEADER_LOCK) is None, timeout=60)  # the scheduler stopped with it
    db.dispose()
