"""Scale-out on Celery: the app, its tasks, how the scheduler sends them, and the ``flywheel worker`` process.

The job bodies are the same plain functions the embedded scheduler calls in-process (a training run, a
label-quality pass, a monitoring pass); a Celery task only carries ids and names and calls them. The database row
is the record of a job and a message is only a nudge: a worker claims a training run with a conditional update
before doing anything, so a message delivered twice runs it once, and the scheduler re-sends a nudge for a run that
nobody claimed (a lost message).

Broker settings that matter for long jobs (Redis): ``acks_late`` keeps a message until its job ends, so a worker
that dies mid-job does not lose it; Redis redelivers an unacknowledged message after its *visibility timeout*
(one hour by default), which would hand a two-hour fine-tune to a second worker while the first still trains it.
The timeout is therefore set above the longest job (``broker_visibility_timeout_seconds``, 12 h); a dead worker's
run is recovered long before that by the stale-run rule (heartbeat), and a late redelivery finds the run finished.
``worker_prefetch_multiplier=1`` with ``acks_late`` makes each worker process reserve one message at a time, so a
long job never holds back others that an idle worker could start now.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select, update

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.models.records import Task, Tenant
from flywheel.models.slas import Sla
from flywheel.models.training import TrainingRun, WorkerProcess
from flywheel.retrain.routing import QUEUE_CPU, QUEUE_GPU, Executor, executor_for

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

TASK_TRAIN = "flywheel.train_run"
TASK_LABEL_QUALITY = "flywheel.label_quality"
TASK_MONITOR = "flywheel.monitor"
TASK_QUEUE_NIGHTLY_RUNS = "flywheel.queue_nightly_runs"
TASK_DATA_RIGHTS = "flywheel.data_rights"


def make_celery(settings: Settings, queues: Sequence[str] | None = None) -> Celery:
    """The Celery app for ``settings.broker_url``, with every task registered. Tasks open the database lazily, once
    per worker process (a forked child never reuses its parent's connections)."""
    from celery import Celery

    if not settings.broker_url:
        raise ValueError("scale-out needs FLYWHEEL_BROKER_URL (for example redis://127.0.0.1:6379/0)")
    app = Celery("flywheel", broker=settings.broker_url, backend=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE_CPU,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_seconds},
        result_backend_transport_options={"visibility_timeout": settings.broker_visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_expires=24 * 3600,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    _register_tasks(app, JobContext(settings, queues))
    return app


class JobContext:
    """The settings and this process's database, opened on first use in each process."""

    def __init__(self, settings: Settings, queues: Sequence[str] | None) -> None:
        self.settings = settings
        self.queues = queues
        self._db: Database | None = None
        self._pid = 0

    @property
    def db(self) -> Database:
        if self._db is None or self._pid != os.getpid():
            self._db = Database(self.settings.database_url)
            self._pid = os.getpid()
        return self._db


def _register_tasks(app: Celery, ctx: JobContext) -> None:
    """The tasks: each takes ids or names and calls the job function the embedded scheduler calls too."""

    @app.task(name=TASK_TRAIN, shared=False)
    def train_run(run_id: int) -> str:
        from flywheel.retrain.jobs import run_training

        status = run_training(ctx.db, ctx.settings, run_id, executor=executor_for(ctx.queues))
        if status == "queued":  # handed to the gpu queue: nudge a GPU worker now
            dispatch_queued_runs(ctx.db, ctx.settings, app, only=[run_id])
        return status

    @app.task(
        name=TASK_LABEL_QUALITY, ignore_result=False, shared=False
    )  # a chord member: its result releases the callback
    def label_quality(task: str, tenant: str) -> list[int]:
        from flywheel.feedback.jobs import label_quality_pass

        return label_quality_pass(ctx.db, ctx.settings, tenant=tenant, task=task)

    @app.task(name=TASK_MONITOR, shared=False)
    def monitor(task: str, tenant: str) -> dict[str, Any]:
        from flywheel.monitoring.jobs import run_monitoring

        return run_monitoring(ctx.db, ctx.settings, tenant=tenant, task=task)

    @app.task(name=TASK_QUEUE_NIGHTLY_RUNS, shared=False)
    def queue_nightly_runs(_passes: Any = None) -> list[int]:
        from flywheel.retrain.jobs import nightly_retrain

        queued = nightly_retrain(ctx.db, ctx.settings)
        dispatch_queued_runs(ctx.db, ctx.settings, app)
        return queued

    @app.task(name=TASK_DATA_RIGHTS, shared=False)
    def data_rights() -> dict[str, Any]:
        from flywheel.monitoring.taint import nightly_data_rights

        return nightly_data_rights(ctx.db, ctx.settings)

    del train_run, label_quality, monitor, queue_nightly_runs, data_rights  # registered on the app by name

    from celery.signals import worker_process_init

    worker_process_init.connect(lambda **_: warm_up(ctx.settings), weak=False)


def warm_up(settings: Settings) -> None:
    """Load what the jobs need (torch, transformers, the base encoder) when a worker process starts, not inside
    its first job: every job then costs the same, and a fork never inherits a running torch thread pool."""
    from flywheel.domain.encoder import load_encoder

    load_encoder(settings.base_model or None)
    log.info("worker process %s is warm", os.getpid())


# --- what the scheduler sends ------------------------------------------------------------------------------------


def labeled_scopes(db: Database) -> list[tuple[str, str]]:
    """Every (task name, tenant slug) with labeled predictions: the nightly label-quality passes."""
    from flywheel.models.records import Prediction

    with db.session() as session:
        stmt = (
            select(Task.name, Tenant.slug)
            .join(Prediction, Prediction.task_id == Task.id)
            .join(Tenant, Tenant.id == Prediction.tenant_id)
            .distinct()
            .order_by(Task.name, Tenant.slug)
        )
        stmt = stmt.where(Prediction.effective_label.is_not(None))
        return [(t, n) for t, n in session.execute(stmt)]


def sla_scopes(db: Database) -> list[tuple[str, str]]:
    with db.session() as session:
        stmt = (
            select(Task.name, Tenant.slug)
            .join(Sla, Sla.task_id == Task.id)
            .join(Tenant, Tenant.id == Sla.tenant_id)
            .distinct()
            .order_by(Task.name, Tenant.slug)
        )
        return [(t, n) for t, n in session.execute(stmt)]


def dispatch_nightly(db: Database, settings: Settings, app: Celery) -> int:
    """The nightly fan-out: one label-quality task per (task, tenant) scope, all of them before any training
    (a chord), then one training run per scope, each its own message. Returns the number of scopes."""
    from celery import chord

    passes = [
        app.signature(TASK_LABEL_QUALITY, args=(task, tenant), queue=QUEUE_CPU) for task, tenant in labeled_scopes(db)
    ]
    then = app.signature(TASK_QUEUE_NIGHTLY_RUNS, queue=QUEUE_CPU)
    if not settings.label_quality_enabled or not passes:
        then.apply_async()
        return 0
    chord(passes)(then)
    return len(passes)


def dispatch_monitoring(db: Database, app: Celery) -> int:
    """One monitoring task per (task, tenant) with an SLA."""
    found = sla_scopes(db)
    for task, tenant in found:
        app.send_task(TASK_MONITOR, args=(task, tenant), queue=QUEUE_CPU)
    return len(found)


def dispatch_queued_runs(
    db: Database, settings: Settings, app: Celery, *, only: Sequence[int] | None = None
) -> list[int]:
    """Send a nudge for every queued run never sent, or sent ``dispatch_resend_seconds`` ago and still unclaimed
    (a lost message). The send time is recorded first, so two schedulers racing send one nudge each at most."""
    now = utcnow()
    resend_before = now - timedelta(seconds=settings.dispatch_resend_seconds)
    sent: list[int] = []
    with db.session() as session:
        stmt = select(TrainingRun.id, TrainingRun.queue, TrainingRun.dispatched_at).where(
            TrainingRun.status == "queued"
        )
        if only is not None:
            stmt = stmt.where(TrainingRun.id.in_(list(only)))
        else:
            stmt = stmt.where(or_(TrainingRun.dispatched_at.is_(None), TrainingRun.dispatched_at < resend_before))
        rows = session.execute(stmt.order_by(TrainingRun.id)).all()
    for run_id, queue, dispatched_at in rows:
        with db.session() as session:
            claimed = session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id, TrainingRun.status == "queued")
                .where(
                    TrainingRun.dispatched_at.is_(None)
                    if dispatched_at is None
                    else TrainingRun.dispatched_at == dispatched_at
                )
                .values(dispatched_at=now, queue=queue or QUEUE_CPU)
                .execution_options(synchronize_session=False)
            )
        if getattr(claimed, "rowcount", 0) != 1:
            continue
        app.send_task(TASK_TRAIN, args=(run_id,), queue=queue or QUEUE_CPU)
        sent.append(int(run_id))
    if sent:
        log.info("sent training runs %s", sent)
    return sent


# --- the worker process ------------------------------------------------------------------------------------------


class Registration:
    """A worker's row in ``worker_processes``, refreshed by a heartbeat thread and removed at exit."""

    def __init__(self, db: Database, settings: Settings, executor: Executor, concurrency: int) -> None:
        self.db, self.settings, self.executor, self.concurrency = db, settings, executor, concurrency
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Registration:
        self._beat(first=True)
        self._thread = threading.Thread(target=self._loop, name="worker-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self.db.session() as session:
            session.execute(delete(WorkerProcess).where(WorkerProcess.name == self.executor.name))

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.worker_heartbeat_seconds):
            try:
                self._beat()
            except Exception:
                log.warning("worker heartbeat failed", exc_info=True)

    def _beat(self, *, first: bool = False) -> None:
        now = utcnow()
        with self.db.session() as session:
            row = session.get(WorkerProcess, self.executor.name)
            if row is None:
                session.add(
                    WorkerProcess(
                        name=self.executor.name,
                        queues=",".join(self.executor.queues),
                        device=self.executor.device,
                        concurrency=self.concurrency,
                        started_at=now,
                        heartbeat_at=now,
                    )
                )
            else:
                row.heartbeat_at = now
                if first:
                    row.started_at = now


def run_worker(settings: Settings, *, queues: Sequence[str] | None, concurrency: int) -> None:
    """``flywheel worker``: register, then consume ``queues`` (by default ``cpu``, plus ``gpu`` where CUDA is)."""
    executor = executor_for(queues)
    if QUEUE_GPU in executor.queues and not executor.has_gpu:
        log.warning("this worker consumes the gpu queue but has no CUDA device: fine-tunes will run on its CPU")
    app = make_celery(settings, executor.queues)
    db = Database(settings.database_url)
    log.info("worker %s: queues %s, device %s", executor.name, ",".join(executor.queues), executor.device)
    with Registration(db, settings, executor, concurrency):
        db.dispose()  # the pool children open their own connections
        app.worker_main(
            [
                "worker",
                f"--queues={','.join(executor.queues)}",
                f"--concurrency={concurrency}",
                f"--hostname={executor.name.replace(':', '-')}@%h",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
            ]
        )
