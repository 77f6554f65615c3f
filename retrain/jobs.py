"""Retraining jobs: queue runs, claim them, run them, recover dead runs, and what the scheduler calls.

The run's lifecycle is queue → claim (here) → train → gate → register → promote (``pipeline``). Jobs take ids,
open their own sessions and are safe to run twice: a finished run is never redone, a queued run is claimed by one
conditional UPDATE, and the model version row, the promotion and the run's final status are written in one
transaction at the very end, so a process killed mid-training changes no champion.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from flywheel.core.db import utcnow
from flywheel.domain import champions
from flywheel.domain.holdout import outside_holdout
from flywheel.domain.partitions import feedback_joins_prediction
from flywheel.models.records import Feedback, Prediction, Task, Tenant
from flywheel.models.slas import SlaEvaluation
from flywheel.models.training import RUN_FINISHED, ChampionSlot, ModelVersion, TrainingRun
from flywheel.retrain import pipeline, registry
from flywheel.retrain.routing import Executor, owner

if TYPE_CHECKING:
    from flywheel.core.config import Settings
    from flywheel.core.db import Database

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


def _host() -> str:
    return owner()[0]


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host (signal 0 checks without touching it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


# --- queueing and claiming --------------------------------------------------------------------------------------------


def queue_run(session: Session, task: Task, tenant: Tenant | None, *, trigger: str) -> TrainingRun:
    """Queue a training run for a scope; an already queued run of that scope is returned instead of a second one."""
    existing = session.scalars(
        select(TrainingRun)
        .where(
            TrainingRun.task_id == task.id,
            TrainingRun.tenant_id.is_(None) if tenant is None else TrainingRun.tenant_id == tenant.id,
            TrainingRun.status == "queued",
        )
        .order_by(TrainingRun.id)
    ).first()
    if existing is not None:
        return existing
    run = TrainingRun(
        task_id=task.id,
        tenant_id=tenant.id if tenant else None,
        status="queued",
        trigger=trigger,
        progress=0.0,
        metrics={},
        reasons=[],
        lineage={},
        created_at=utcnow(),
    )
    session.add(run)
    session.flush()
    return run


def claim_run(session: Session, run_id: int) -> bool:
    """Move one queued run to ``running`` for this process (owner ``host:pid``, a fresh heartbeat, one more
    attempt); False when someone else claimed it first. The conditional update is the claim: a message delivered
    twice, or two workers racing, end with exactly one owner."""
    now = utcnow()
    result = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == "queued")
        .values(
            status="running",
            host=_host(),
            pid=os.getpid(),
            started_at=now,
            heartbeat_at=now,
            message="starting",
            attempts=TrainingRun.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def claim_next(db: Database) -> int | None:
    """Claim the oldest queued run whose scope has no run in progress."""
    with db.session() as session:
        busy = {
            (t, n)
            for t, n in session.execute(
                select(TrainingRun.task_id, TrainingRun.tenant_id).where(TrainingRun.status == "running")
            )
        }
        queued = session.execute(
            select(TrainingRun.id, TrainingRun.task_id, TrainingRun.tenant_id)
            .where(TrainingRun.status == "queued")
            .order_by(TrainingRun.id)
            .limit(100)
        ).all()
        for run_id, task_id, tenant_id in queued:
            if (task_id, tenant_id) in busy:
                continue
            if claim_run(session, run_id):
                return int(run_id)
    return None


def abandoned_because(run: TrainingRun, settings: Settings, now: datetime) -> str | None:
    """Why a ``running`` run's owner is gone (its pid is dead on this host, or its heartbeat is stale), or None."""
    beat = run.heartbeat_at or run.started_at or run.created_at
    if run.host == _host() and run.pid is not None and not pid_alive(run.pid):
        return f"process {run.pid} on {run.host} is gone"
    if beat < now - timedelta(seconds=settings.run_stale_seconds):
        return f"no heartbeat from {run.host}:{run.pid} since {beat.isoformat()}"
    return None


def release_abandoned(run: TrainingRun, why: str, settings: Settings, now: datetime) -> None:
    """Queue an abandoned run again for another process (its next attempt), or fail it after
    ``run_max_attempts`` claims. Nothing else needs undoing: a run writes its model, promotion and status in one
    final transaction guarded by its claim, so a dead owner left none of them behind."""
    if run.attempts < settings.run_max_attempts:
        run.status, run.host, run.pid = "queued", None, None
        run.started_at = run.heartbeat_at = run.dispatched_at = None
        run.progress = 0.0
        run.message = f"re-queued: {why} (attempt {run.attempts} of {settings.run_max_attempts})"[:500]
    else:
        run.status = "failed"
        run.error = f"abandoned: {why}; no model was promoted (attempt {run.attempts} of {settings.run_max_attempts})"
        run.message = "abandoned"
        run.finished_at = now


def recover_stale_runs(db: Database, settings: Settings, *, now: datetime | None = None) -> list[int]:
    """Release the runs left ``running`` by a dead process (``abandoned_because``): each is queued again for its
    next attempt, or failed once it has used ``run_max_attempts``. Returns their ids."""
    now = now or utcnow()
    recovered: list[int] = []
    with db.session() as session:
        for run in session.scalars(select(TrainingRun).where(TrainingRun.status == "running")):
            why = abandoned_because(run, settings, now)
            if why is not None:
                release_abandoned(run, why, settings, now)
                recovered.append(run.id)
    if recovered:
        log.warning("released abandoned training runs: %s", recovered)
    return recovered


# --- running a claimed run ---------------------------------------------------------------------------------------


class RunReporter:
    """Writes a run's progress to its row (throttled) and keeps its heartbeat fresh from a background thread."""

    heartbeat_s = 10.0  # well inside ``settings.run_stale_seconds``

    def __init__(self, db: Database, run_id: int, *, progress: Progress | None = None) -> None:
        self.db = db
        self.run_id = run_id
        self.progress = progress
        self._last_write = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"run-{run_id}-heartbeat", daemon=True)

    def __enter__(self) -> RunReporter:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                with self.db.session() as session:
                    session.execute(
                        update(TrainingRun)
                        .where(TrainingRun.id == self.run_id, TrainingRun.status == "running")
                        .values(heartbeat_at=utcnow())
                    )
            except Exception:  # the database blipped; the next beat tries again
                log.warning("heartbeat of run %s failed", self.run_id, exc_info=True)

    def __call__(self, fraction: float, message: str, *, force: bool = False) -> None:
        if self.progress is not None:
            self.progress(fraction, message)
        now = time.monotonic()
        if not force and now - self._last_write < 1.0 and fraction < 1.0:
            return
        self._last_write = now
        with self.db.session() as session:
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == self.run_id, TrainingRun.status == "running")
                .values(progress=round(float(fraction), 4), message=message[:500], heartbeat_at=utcnow())
            )


def run_training(
    db: Database,
    settings: Settings,
    run_id: int,
    *,
    progress: Progress | None = None,
    fine_tune_overrides: dict[str, Any] | None = None,
    executor: Executor | None = None,
) -> str:
    """Run one training run to its end: claim it, train, gate, maybe promote (``pipeline``). Returns the final status.

    A run already finished is left alone (its status is returned); one running in another live process too.
    ``executor``: the Celery worker running it (None in-process), which decides where a fine-tune may run.
    """
    settled = _claim_for_this_process(db, settings, run_id)
    if settled is not None:
        return settled
    with RunReporter(db, run_id, progress=progress) as report:
        try:
            return pipeline.train_and_gate(db, settings, run_id, report, fine_tune_overrides, executor)
        except Exception as exc:
            log.exception("training run %s failed", run_id)
            mark_failed(db, run_id, exc)
            return "failed"


def _claim_for_this_process(db: Database, settings: Settings, run_id: int) -> str | None:
    """None when this process now holds the run (claimed here, or already running here); else the status to
    report without training: finished, claimed by someone else, or running in another live process. A run whose
    owner is gone (a redelivered message after its worker died) is released first, then claimed here."""
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise LookupError(f"training run {run_id} does not exist")
        if run.status in RUN_FINISHED:
            return run.status
        if run.status == "running" and (run.host, run.pid) != owner():
            now = utcnow()
            why = abandoned_because(run, settings, now)
            if why is not None:
                release_abandoned(run, why, settings, now)
                session.flush()
                if run.status in RUN_FINISHED:
                    return run.status
        if run.status == "queued" and not claim_run(session, run_id):
            session.expire_all()
            again = session.get(TrainingRun, run_id)
            return again.status if again else "failed"
        if run.status == "running" and (run.host, run.pid) != owner():
            return "running"
    return None


def mark_failed(db: Database, run_id: int, exc: BaseException) -> None:
    """Record a run's failure (the exception's one-line summary); no model was registered or promoted."""
    with db.session() as session:
        failed = session.get(TrainingRun, run_id)
        if failed is not None:
            failed.status = "failed"
            failed.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]
            failed.message = "failed"
            failed.finished_at = utcnow()


# --- what the scheduler calls -------------------------------------------------------------------------------------


def eligible_tenants(session: Session, task_id: int, settings: Settings) -> list[Tenant]:
    """Tenants with enough clean training labels of their own for a fine-tuned variant."""
    counts = session.execute(
        select(Prediction.tenant_id, func.count())
        .where(
            Prediction.task_id == task_id,
            Prediction.effective_label.is_not(None),
            Prediction.label_discarded.is_(False),
            outside_holdout(settings.holdout_percent),
        )
        .group_by(Prediction.tenant_id)
    ).all()
    ids = [tid for tid, n in counts if n >= settings.fine_tune_min_labels]
    if not ids:
        return []
    return list(
        session.scalars(select(Tenant).where(Tenant.id.in_(ids), Tenant.status == "active").order_by(Tenant.id))
    )


def tainted_variant_tenants(session: Session, task_id: int) -> list[Tenant]:
    """Tenants whose own champion on the task is tainted: retrained tonight even below the eligibility bar, so the
    gate can replace a model that trained on erased records."""
    return list(
        session.scalars(
            select(Tenant)
            .join(ChampionSlot, ChampionSlot.tenant_id == Tenant.id)
            .join(ModelVersion, ModelVersion.id == ChampionSlot.model_id)
            .where(ChampionSlot.task_id == task_id, ModelVersion.tainted_at.is_not(None), Tenant.status == "active")
            .order_by(Tenant.id)
        )
    )


def nightly_retrain(db: Database, settings: Settings, *, trigger: str = "nightly") -> list[int]:
    """Queue a run for every task's shared model and for every tenant with enough labels for its own variant (or
    whose variant is tainted: it must be replaced without the erased records).

    The shared runs come first (lower ids), so a tenant variant is compared with tonight's shared model.
    """
    queued: list[int] = []
    with db.session() as session:
        tasks = list(session.scalars(select(Task).order_by(Task.id)))
        for task in tasks:
            registry.ensure_zero_shot(session, task, settings)
            queued.append(queue_run(session, task, None, trigger=trigger).id)
        for task in tasks:
            tenants = {t.id: t for t in eligible_tenants(session, task.id, settings)}
            tenants.update({t.id: t for t in tainted_variant_tenants(session, task.id)})
            for tenant in sorted(tenants.values(), key=lambda t: t.id):
                queued.append(queue_run(session, task, tenant, trigger=trigger).id)
    log.info("nightly retrain queued runs %s", queued)
    return queued


def request_early_retrain(
    session: Session,
    task_id: int,
    tenant_id: int | None,
    *,
    reason: str,
    settings: Settings,
    now: datetime | None = None,
) -> TrainingRun | None:
    """Queue an early run unless one is queued or running, or one was created within the debounce window."""
    now = now or utcnow()
    scope = TrainingRun.tenant_id.is_(None) if tenant_id is None else TrainingRun.tenant_id == tenant_id
    last = session.scalars(
        select(TrainingRun).where(TrainingRun.task_id == task_id, scope).order_by(TrainingRun.id.desc())
    ).first()
    if last is not None:
        if last.status in ("queued", "running"):
            return None
        if last.created_at > now - timedelta(minutes=settings.early_retrain_debounce_minutes):
            return None
    task = session.get(Task, task_id)
    tenant = session.get(Tenant, tenant_id) if tenant_id else None
    if task is None:
        return None
    return queue_run(session, task, tenant, trigger=f"early:{reason}"[:32])


def new_clean_labels(session: Session, task_id: int, since: datetime | None) -> int:
    """Predictions of the task that got feedback since ``since`` and have a clean effective label."""
    stmt = (
        select(func.count(func.distinct(Prediction.id)))
        .select_from(Prediction)
        .join(Feedback, feedback_joins_prediction())
        .where(
            Prediction.task_id == task_id,
            Prediction.effective_label.is_not(None),
            Prediction.label_discarded.is_(False),
        )
    )
    if since is not None:
        stmt = stmt.where(Feedback.received_at > since)
    return int(session.scalar(stmt) or 0)


def breached_scopes(session: Session) -> list[tuple[int, int, datetime]]:
    """(task_id, tenant_id, evaluated_at) of every SLA whose latest evaluation is ``breached`` (monitoring area)."""
    latest = (
        select(SlaEvaluation.sla_id, func.max(SlaEvaluation.id).label("last_id"))
        .group_by(SlaEvaluation.sla_id)
        .subquery()
    )
    rows = session.execute(
        select(SlaEvaluation.task_id, SlaEvaluation.tenant_id, SlaEvaluation.evaluated_at)
        .join(latest, latest.c.last_id == SlaEvaluation.id)
        .where(SlaEvaluation.status == "breached")
    ).all()
    return [(int(t), int(n), at) for t, n, at in rows]


def check_early_retrain(db: Database, settings: Settings, *, now: datetime | None = None) -> list[int]:
    """Queue early runs: a task with ``early_retrain_new_labels`` new clean labels since its last shared run, or an
    SLA breached since the last run of the scope that serves that tenant (its variant's, else the shared one).
    ``request_early_retrain`` debounces both."""
    now = now or utcnow()
    queued: list[int] = []

    def last_created(session: Session, task_id: int, tenant_id: int | None) -> datetime | None:
        scope = TrainingRun.tenant_id.is_(None) if tenant_id is None else TrainingRun.tenant_id == tenant_id
        return session.scalar(select(func.max(TrainingRun.created_at)).where(TrainingRun.task_id == task_id, scope))

    with db.session() as session:
        for task in session.scalars(select(Task).order_by(Task.id)):
            since = last_created(session, task.id, None)
            if new_clean_labels(session, task.id, since) >= settings.early_retrain_new_labels:
                run = request_early_retrain(session, task.id, None, reason="labels", settings=settings, now=now)
                if run is not None:
                    queued.append(run.id)
        for task_id, tenant_id, evaluated_at in breached_scopes(session):
            has_variant = champions.champion_slot(session, task_id, tenant_id) is not None
            scope_tenant = tenant_id if has_variant else None
            since = last_created(session, task_id, scope_tenant)
            if since is not None and evaluated_at <= since:
                continue  # a run already started after this breach was measured
            run = request_early_retrain(session, task_id, scope_tenant, reason="sla", settings=settings, now=now)
            if run is not None:
                queued.append(run.id)
    return queued


def process_queue(db: Database, settings: Settings, *, max_runs: int | None = None) -> list[int]:
    """Claim and run queued runs one after another until none is left (or ``max_runs``)."""
    done: list[int] = []
    recover_stale_runs(db, settings)
    while max_runs is None or len(done) < max_runs:
        run_id = claim_next(db)
        if run_id is None:
            break
        run_training(db, settings, run_id)
        done.append(run_id)
    return done
