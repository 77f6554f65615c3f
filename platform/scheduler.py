"""The scheduler process (``flywheel scheduler``): nightly retraining, hourly monitoring, the training queue.

Exactly one scheduler is active. Two database mechanisms make that hold without a coordinator:

- a leader lease (``job_locks`` row ``scheduler``): a process runs APScheduler only while it holds the lease and
  renews it every ``ttl / 3``; a second process waits and takes over when the lease expires (kill -9 included);
- a once-per-fire record (``job_runs``, unique on job id + fire time): even if two processes fired the same cron
  at the same moment (a lease handover mid-fire), the second insert fails and that process skips the job.

APScheduler keeps its job definitions in the application database (``SQLAlchemyJobStore``; the table
``apscheduler_jobs`` is excluded from Alembic). Every job has an explicit id and is re-registered with
``replace_existing=True`` at start. Without a broker, jobs run in this process (training runs in a worker
thread); with ``FLYWHEEL_BROKER_URL`` set, the scheduler only dispatches them to Celery workers
(``flywheel.worker``): the same job functions, only the dispatch differs. Web workers never train.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.models.training import JobLock, JobRun

log = logging.getLogger(__name__)

LEADER_LOCK = "scheduler"
JOB_NIGHTLY = "flywheel.nightly_retrain"
JOB_MONITORING = "flywheel.monitoring"
JOB_POLL = "flywheel.training_poll"
JOB_EARLY = "flywheel.early_retrain"
JOB_HOUSEKEEPING = "flywheel.housekeeping"
JOB_RIGHTS = "flywheel.data_rights"
JOB_DELETIONS = "flywheel.tenant_deletions"

# The running services of this process, by key: APScheduler stores a job's function by reference and its args
# pickled, so jobs carry the key of their service rather than the service itself.
_SERVICES: dict[str, SchedulerService] = {}


# --- leases and once-per-fire ------------------------------------------------------------------------------------


def acquire_lease(db: Database, name: str, owner: str, ttl_s: float, *, now: datetime | None = None) -> bool:
    """Take or renew the lease ``name`` for ``owner``; False while another owner's lease is unexpired."""
    now = now or utcnow()
    expires = now + timedelta(seconds=ttl_s)
    with db.session() as session:
        result = session.execute(
            update(JobLock)
            .where(JobLock.name == name, or_(JobLock.owner == owner, JobLock.expires_at < now))
            .values(owner=owner, expires_at=expires)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) == 1:
            return True
        if session.get(JobLock, name) is not None:
            return False
        try:
            with session.begin_nested():
                session.add(JobLock(name=name, owner=owner, acquired_at=now, expires_at=expires))
        except IntegrityError:
            return False
        return True


def release_lease(db: Database, name: str, owner: str) -> None:
    with db.session() as session:
        session.execute(delete(JobLock).where(JobLock.name == name, JobLock.owner == owner))


def lease_holder(db: Database, name: str) -> str | None:
    with db.session() as session:
        row = session.get(JobLock, name)
        return row.owner if row is not None and row.expires_at > utcnow() else None


def last_fire_time(trigger: Any, now: datetime, *, lookback: timedelta = timedelta(days=2)) -> datetime | None:
    """The latest time ``trigger`` fired at or before ``now`` (what a late or coalesced execution belongs to)."""
    last = None
    fire = trigger.get_next_fire_time(None, now - lookback)
    while fire is not None and fire <= now:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return last


def fire_key(trigger: Any, now: datetime) -> str:
    """The once-per-fire key of a cron job at ``now``: its trigger's latest fire time (``now`` without a trigger)."""
    fire = last_fire_time(trigger, now) if trigger is not None else None
    return (fire or now).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_triggers(settings: Settings) -> dict[str, Any]:
    """The scheduler's jobs and their triggers, by job id (a bad cron string fails here)."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    return {
        JOB_NIGHTLY: CronTrigger.from_crontab(settings.retrain_cron, timezone=UTC),
        JOB_MONITORING: CronTrigger.from_crontab(settings.monitor_cron, timezone=UTC),
        JOB_POLL: IntervalTrigger(seconds=settings.training_poll_seconds, timezone=UTC),
        JOB_EARLY: IntervalTrigger(seconds=settings.early_retrain_check_seconds, timezone=UTC),
        JOB_HOUSEKEEPING: CronTrigger.from_crontab(settings.housekeeping_cron, timezone=UTC),
        JOB_RIGHTS: CronTrigger.from_crontab(settings.rights_cron, timezone=UTC),
        JOB_DELETIONS: IntervalTrigger(seconds=settings.tenant_deletion_poll_seconds, timezone=UTC),
    }


def run_once(db: Database, job_id: str, fire_key: str, owner: str, fn: Callable[[], Any]) -> bool:
    """Run ``fn`` unless this (job, fire time) already ran anywhere; the unique row decides. True when it ran."""
    try:
        with db.session() as session:
            session.add(JobRun(job_id=job_id, fire_key=fire_key, owner=owner, status="running", detail={}))
    except IntegrityError:
        log.info("job %s for %s already ran elsewhere; skipping", job_id, fire_key)
        return False
    status: str = "succeeded"
    detail: dict[str, Any] = {}
    try:
        result = fn()
        if isinstance(result, list | dict):
            detail = {"result": result}
    except Exception as exc:
        status, detail = "failed", {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        log.exception("job %s failed", job_id)
    with db.session() as session:
        session.execute(
            update(JobRun)
            .where(JobRun.job_id == job_id, JobRun.fire_key == fire_key)
            .values(status=status, detail=detail, finished_at=utcnow())
        )
    return True


# --- job functions (module level: the job store references them by name) --------------------------------------------


def nightly_pipeline(db: Database, settings: Settings) -> list[int]:
    """The nightly work before training: the labeling-rule back-fill, the label-quality pass (so tonight's
    training set leaves out the label issues it finds), then one queued training run per task and eligible
    tenant. Returns the queued run ids."""
    from flywheel.feedback.jobs import rules_backfill
    from flywheel.retrain.jobs import nightly_retrain

    rules_backfill(db)  # labeling rules vote on older predictions first: the pass and training read the votes
    if settings.label_quality_enabled:
        from flywheel.feedback.jobs import label_quality_pass

        label_quality_pass(db, settings)
    return nightly_retrain(db, settings)


def housekeeping(db: Database, settings: Settings, *, now: datetime | None = None) -> dict[str, Any]:
    """Daily storage upkeep, cheap enough to run in the scheduler itself: on PostgreSQL, the coming months'
    partitions (expired months are dropped by the nightly data-rights job's retention)."""
    from flywheel.domain import partitions

    with db.session() as session:
        created = partitions.ensure_partitions(session, now or utcnow(), months_ahead=settings.partition_months_ahead)
    return {"partitions_created": created}


def _service(key: str) -> SchedulerService | None:
    service = _SERVICES.get(key)
    if service is None:
        log.warning("no scheduler service %s in this process; job skipped", key)
    return service


def nightly_job(key: str) -> None:
    service = _service(key)
    if service is not None:
        service.run_cron_job(JOB_NIGHTLY, service.nightly)


def monitoring_job(key: str) -> None:
    service = _service(key)
    if service is not None:
        service.run_cron_job(JOB_MONITORING, service.monitoring)


def housekeeping_job(key: str) -> None:
    service = _service(key)
    if service is not None:
        service.run_cron_job(JOB_HOUSEKEEPING, lambda: housekeeping(service.db, service.settings))


def poll_job(key: str) -> None:
    service = _service(key)
    if service is not None:
        service.poll()


def early_retrain_job(key: str) -> None:
    service = _service(key)
    if service is not None:
        service.early_retrain()


def data_rights_job(key: str) -> None:
    service = _service(key)
    if service is not None:
        service.run_cron_job(JOB_RIGHTS, service.data_rights)


def tenant_deletions_job(key: str) -> None:
    service = _service(key)
    if service is not None:
        service.tenant_deletions()


# --- the service -------------------------------------------------------------------------------------------------


class SchedulerService:
    """One scheduler: waits for the leader lease, then runs APScheduler and the training worker while it leads.

    ``triggers`` overrides the trigger of a job by id (tests fire the nightly job at a chosen moment).
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        owner: str | None = None,
        triggers: dict[str, Any] | None = None,
        lease_ttl_s: float | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.key = uuid.uuid4().hex[:12]
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{self.key}"
        self.lease_ttl_s = float(lease_ttl_s or settings.scheduler_lock_ttl_seconds)
        self.trigger_overrides = dict(triggers or {})
        self.leading = threading.Event()
        self._stop = threading.Event()
        self._scheduler: Any = None
        self._thread: threading.Thread | None = None
        self._training = threading.Lock()
        self._trainer: threading.Thread | None = None
        self._celery: Any = None  # the Celery app when jobs are dispatched to workers (a broker URL is set)
        self.triggers: dict[str, Any] = self._build_triggers()  # a bad cron string fails here, at start-up

    # lifecycle

    def start(self) -> None:
        """Start in the background: lead when the lease is free, stand by otherwise."""
        _SERVICES[self.key] = self
        self._thread = threading.Thread(target=self._lead_loop, name=f"scheduler-{self.key}", daemon=True)
        self._thread.start()

    def stop(self, *, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop_scheduler()
        if self._trainer is not None:
            self._trainer.join(timeout)
        release_lease(self.db, LEADER_LOCK, self.owner)
        _SERVICES.pop(self.key, None)

    def run_forever(self) -> None:
        """``flywheel scheduler``: run until SIGINT/SIGTERM."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        self.start()
        while not self._stop.wait(1.0):
            pass
        self.stop()

    def _lead_loop(self) -> None:
        renew_every = max(self.lease_ttl_s / 3, 0.2)
        waiting_logged = False
        while not self._stop.is_set():
            try:
                held = acquire_lease(self.db, LEADER_LOCK, self.owner, self.lease_ttl_s)
            except Exception:
                log.warning("scheduler lease check failed", exc_info=True)
                held = False
            if held and not self.leading.is_set():
                log.info("scheduler %s is now the active scheduler", self.owner)
                try:
                    self._become_leader()
                except Exception:
                    log.exception("scheduler %s could not start its jobs; standing by", self.owner)
                    self._stop_scheduler()
                    release_lease(self.db, LEADER_LOCK, self.owner)
                    held = False
            elif not held and self.leading.is_set():
                log.error("scheduler %s lost its lease; standing by", self.owner)
                self._stop_scheduler()
            elif not held and not waiting_logged:
                log.info("another scheduler is active (%s); standing by", lease_holder(self.db, LEADER_LOCK))
                waiting_logged = True
            self._stop.wait(renew_every if held else min(renew_every, 2.0))

    def _become_leader(self) -> None:
        from flywheel.retrain.jobs import recover_stale_runs

        recover_stale_runs(self.db, self.settings)
        self._start_scheduler()
        self.leading.set()
        self.poll()  # queued runs start now, not one poll interval later

    def _build_triggers(self) -> dict[str, Any]:
        return {**job_triggers(self.settings), **self.trigger_overrides}

    def _start_scheduler(self) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.db.engine)},
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 6 * 3600},
            timezone=UTC,
        )
        functions = {
            JOB_NIGHTLY: nightly_job,
            JOB_MONITORING: monitoring_job,
            JOB_POLL: poll_job,
            JOB_EARLY: early_retrain_job,
            JOB_HOUSEKEEPING: housekeeping_job,
            JOB_RIGHTS: data_rights_job,
            JOB_DELETIONS: tenant_deletions_job,
        }
        for job_id, fn in functions.items():
            scheduler.add_job(
                fn, trigger=self.triggers[job_id], id=job_id, name=job_id, args=[self.key], replace_existing=True
            )
        scheduler.start()
        self._scheduler = scheduler

    def _stop_scheduler(self) -> None:
        self.leading.clear()
        if self._scheduler is not None:
            try:
                self._scheduler.shutdown(wait=False)
            except Exception:
                log.warning("scheduler shutdown failed", exc_info=True)
            self._scheduler = None

    # jobs

    def run_cron_job(self, job_id: str, fn: Callable[[], Any], *, now: datetime | None = None) -> bool:
        """Run a cron job once for its latest fire time (no matter how many processes fire it)."""
        if not self.leading.is_set():
            return False
        return run_once(self.db, job_id, fire_key(self.triggers.get(job_id), now or utcnow()), self.owner, fn)

    @property
    def celery(self) -> Any:
        """The Celery app when a broker is configured (jobs go to workers), else None (jobs run here)."""
        if self._celery is None and self.settings.broker_url:
            from flywheel.worker import make_celery

            self._celery = make_celery(self.settings)
        return self._celery

    def nightly(self) -> Any:
        if self.celery is not None:
            from flywheel.feedback.jobs import rules_backfill
            from flywheel.worker import dispatch_nightly

            rules_backfill(self.db)

            return {"label_quality_scopes": dispatch_nightly(self.db, self.settings, self.celery)}
        queued = nightly_pipeline(self.db, self.settings)
        self.poll()
        return queued

    def monitoring(self) -> Any:
        if self.celery is not None:
            from flywheel.worker import dispatch_monitoring

            return {"monitoring_scopes": dispatch_monitoring(self.db, self.celery)}
        from flywheel.monitoring.jobs import run_monitoring

        result = run_monitoring(self.db, self.settings)
        self.early_retrain()  # a fresh breach triggers an early run now rather than at the next check
        return result if isinstance(result, list | dict) else None

    def data_rights(self) -> Any:
        if self.celery is not None:
            from flywheel.retrain.routing import QUEUE_CPU
            from flywheel.worker import TASK_DATA_RIGHTS

            self.celery.send_task(TASK_DATA_RIGHTS, queue=QUEUE_CPU)
            return {"dispatched": TASK_DATA_RIGHTS}
        from flywheel.monitoring.taint import nightly_data_rights

        return nightly_data_rights(self.db, self.settings)

    def tenant_deletions(self) -> list[str]:
        """Advance the deletion of every tenant marked ``deleting`` (bounded per call; the next one resumes). Plain
        batched SQL, so it runs here even with a broker: no worker has anything to add to it."""
        from flywheel.domain.erasure import run_tenant_deletions

        if not self.leading.is_set():
            return []
        return run_tenant_deletions(self.db, batch_size=self.settings.erasure_batch_size, max_batches=50)

    def early_retrain(self) -> list[int]:
        from flywheel.retrain.jobs import check_early_retrain

        if not self.leading.is_set():
            return []
        queued = check_early_retrain(self.db, self.settings)
        if queued:
            self.poll()
        return queued

    def poll(self) -> None:
        """Send queued runs to the workers (with a broker), or hand them to this process's training thread when
        it is idle (one training at a time per scheduler)."""
        if not self.leading.is_set() or self._stop.is_set():
            return
        if self.celery is not None:
            from flywheel.retrain.jobs import recover_stale_runs
            from flywheel.worker import dispatch_queued_runs

            recover_stale_runs(self.db, self.settings)
            dispatch_queued_runs(self.db, self.settings, self.celery)
            return
        if not self._training.acquire(blocking=False):
            return
        try:
            from flywheel.retrain.jobs import recover_stale_runs

            recover_stale_runs(self.db, self.settings)
            self._trainer = threading.Thread(target=self._train_queued, name=f"trainer-{self.key}", daemon=True)
            self._trainer.start()
        except BaseException:
            self._training.release()
            raise

    def _train_queued(self) -> None:
        from flywheel.retrain.jobs import claim_next, run_training

        try:
            while self.leading.is_set() and not self._stop.is_set():
                run_id = claim_next(self.db)
                if run_id is None:
                    break
                log.info("training run %s started", run_id)
                status = run_training(self.db, self.settings, run_id)
                log.info("training run %s finished: %s", run_id, status)
        except Exception:
            log.exception("training worker failed")
        finally:
            self._training.release()


def freeze_loaded_libraries() -> None:
    """The scheduler process lives for days and runs the same jobs: load their libraries up front (Evidently's
    report, torch, transformers) and move everything loaded out of the garbage collector's reach (``gc.freeze``, as
    the web server does after preloading its app). Otherwise full collections walk those libraries' objects again
    and again during a monitoring pass (bench/monitor.py on PostgreSQL: the whole drift pass took 1.27-1.35x the
    bare Evidently calls before, 1.16x after)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from flywheel.monitoring.drift import build_report

    build_report(with_embeddings=True)  # imports what Evidently loads lazily
    gc.collect()
    gc.freeze()


def start_scheduler_process(settings: Settings) -> subprocess.Popen[bytes]:
    """``flywheel up``: the scheduler as its own process beside gunicorn (never inside a web worker)."""
    env = dict(os.environ, FLYWHEEL_DATABASE_URL=settings.database_url)
    return subprocess.Popen(
        [sys.executable, "-c", "from flywheel.cli import main; main()", "scheduler"],
        env=env,
    )


def select_job_runs(db: Database, job_id: str) -> list[tuple[str, str, str]]:
    """(fire_key, owner, status) of a job's executions, oldest first (for tests and the CLI)."""
    with db.session() as session:
        return [
            (k, o, s)
            for k, o, s in session.execute(
                select(JobRun.fire_key, JobRun.owner, JobRun.status).where(JobRun.job_id == job_id).order_by(JobRun.id)
            )
        ]
