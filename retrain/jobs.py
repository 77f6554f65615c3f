"""Retraining jobs: queue runs, claim them, train the next rung of the ladder, gate, promote, recover dead runs.

Jobs take ids, open their own sessions and are safe to run twice: a finished run is never redone, a queued run is
claimed by one conditional UPDATE, and the model version row, the promotion and the run's final status are written
in one transaction at the very end, so a process killed mid-training changes no champion.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from flywheel.core.db import utcnow
from flywheel.domain import champions
from flywheel.domain.holdout import outside_holdout
from flywheel.models.records import Feedback, Prediction, Task, Tenant
from flywheel.models.slas import Sla, SlaEvaluation
from flywheel.models.training import RUN_FINISHED, ChampionSlot, ModelVersion, TrainingRun
from flywheel.retrain import gate, registry
from flywheel.retrain.dataset import TrainingData, build_training_data, embeddings_for

if TYPE_CHECKING:
    from flywheel.core.config import Settings
    from flywheel.core.db import Database

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


def _host() -> str:
    return socket.gethostname()[:255]


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


# --- queueing -------------------------------------------------------------------------------------------------


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


def claim_run(session: Session, run_id: int, *, host: str | None = None, pid: int | None = None) -> bool:
    """Move one queued run to ``running`` for this process; False when someone else claimed it first."""
    now = utcnow()
    result = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == "queued")
        .values(
            status="running",
            host=host or _host(),
            pid=pid if pid is not None else os.getpid(),
            started_at=now,
            heartbeat_at=now,
            message="starting",
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


def recover_stale_runs(db: Database, settings: Settings, *, now: datetime | None = None) -> list[int]:
    """Mark failed the runs left ``running`` by a dead process: its pid is gone (same host) or its heartbeat is stale.

    Nothing else needs undoing: a run writes its model, promotion and status in one final transaction.
    """
    now = now or utcnow()
    host = _host()
    stale_before = now - timedelta(seconds=settings.run_stale_seconds)
    recovered: list[int] = []
    with db.session() as session:
        for run in session.scalars(select(TrainingRun).where(TrainingRun.status == "running")):
            beat = run.heartbeat_at or run.started_at or run.created_at
            dead = run.host == host and run.pid is not None and not pid_alive(run.pid)
            if dead or beat < stale_before:
                why = f"process {run.pid} on {run.host} is gone" if dead else f"no heartbeat since {beat.isoformat()}"
                run.status = "failed"
                run.error = f"abandoned: {why}; no model was promoted"
                run.message = "abandoned"
                run.finished_at = now
                recovered.append(run.id)
    if recovered:
        log.warning("marked abandoned training runs failed: %s", recovered)
    return recovered


# --- the ladder -------------------------------------------------------------------------------------------------


def choose_rung(data: TrainingData, settings: Settings) -> tuple[str | None, str]:
    """Which rung this data supports, and why. Tenant variants are fine-tuned only."""
    counts = data.train.label_counts()
    n = len(data.train)
    if n >= settings.fine_tune_min_labels and len(counts) >= 2:
        return "fine_tuned", f"{n} clean labels >= fine_tune_min_labels ({settings.fine_tune_min_labels})"
    if data.tenant_id is not None:
        return None, (
            f"a tenant variant is fine-tuned only: {n} clean labels < fine_tune_min_labels"
            f" ({settings.fine_tune_min_labels})"
        )
    enough = [label for label, c in counts.items() if c >= settings.few_shot_min_per_class]
    if len(enough) >= 2:
        return "few_shot", f"{len(enough)} labels with >= {settings.few_shot_min_per_class} clean examples"
    return None, (
        f"only {n} clean labels; the few-shot head needs 2 labels with >= {settings.few_shot_min_per_class} each"
    )


def gate_policy(settings: Settings) -> gate.GatePolicy:
    return gate.GatePolicy(
        metric=settings.gate_metric,
        tolerance=settings.gate_tolerance,
        tenant_tolerance=settings.gate_tenant_tolerance,
        min_tenant_holdout=settings.gate_min_tenant_holdout,
    )


def sla_thresholds(session: Session, task_id: int) -> dict[str, list[tuple[str, float]]]:
    """``{tenant slug: [(metric, threshold)]}``: every agreed SLA on the task, which the gate must not breach."""
    rows = session.execute(
        select(Tenant.slug, Sla.metric, Sla.threshold)
        .join(Tenant, Tenant.id == Sla.tenant_id)
        .where(Sla.task_id == task_id)
    ).all()
    out: dict[str, list[tuple[str, float]]] = {}
    for slug, metric, threshold in rows:
        out.setdefault(slug, []).append((str(metric), float(threshold)))
    return out


@dataclass
class _Candidate:
    rung: str
    classifier: Any
    evaluation: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)


class RunReporter:
    """Writes a run's progress to its row (throttled) and keeps its heartbeat fresh from a background thread."""

    def __init__(
        self, db: Database, run_id: int, *, progress: Progress | None = None, heartbeat_s: float = 10.0
    ) -> None:
        self.db = db
        self.run_id = run_id
        self.progress = progress
        self.heartbeat_s = heartbeat_s
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


def _evaluate(clf: Any, texts: list[str], y: list[str], tenants: list[str], labels: list[str]) -> dict[str, Any]:
    import numpy as np

    if not texts:
        return {"overall": {"n": 0.0}, "tenants": {}}
    proba = clf.predict_proba(texts, batch_size=64)
    cols = list(clf.labels)
    pred = [cols[i] for i in np.asarray(proba).argmax(axis=1)]
    return gate.evaluate_predictions(y, pred, tenants, labels)


def _fine_tune_config(settings: Settings, base: str | None, overrides: dict[str, Any] | None) -> Any:
    from flywheel.retrain.finetune import FineTuneConfig

    values: dict[str, Any] = {"base_model": base, "seed": 0, "epochs": settings.fine_tune_epochs}
    values.update(settings.extra.get("fine_tune") or {})  # FineTuneConfig fields, e.g. from a deployment's config
    values.update(overrides or {})
    return FineTuneConfig(**values)


def run_training(
    db: Database,
    settings: Settings,
    run_id: int,
    *,
    progress: Progress | None = None,
    fine_tune_overrides: dict[str, Any] | None = None,
) -> str:
    """Run one training run to its end: claim it, train, gate, maybe promote. Returns the final status.

    A run already finished is left alone (its status is returned); one running in another live process too.
    """
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise LookupError(f"training run {run_id} does not exist")
        if run.status in RUN_FINISHED:
            return run.status
        if run.status == "queued" and not claim_run(session, run_id):
            session.expire_all()
            again = session.get(TrainingRun, run_id)
            return again.status if again else "failed"
        if run.status == "running" and (run.host, run.pid) != (_host(), os.getpid()):
            return "running"
    with RunReporter(db, run_id, progress=progress) as report:
        try:
            return _train_and_gate(db, settings, run_id, report, fine_tune_overrides)
        except Exception as exc:
            log.exception("training run %s failed", run_id)
            with db.session() as session:
                failed = session.get(TrainingRun, run_id)
                if failed is not None:
                    failed.status = "failed"
                    failed.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]
                    failed.message = "failed"
                    failed.finished_at = utcnow()
            return "failed"


def _train_and_gate(
    db: Database,
    settings: Settings,
    run_id: int,
    report: RunReporter,
    fine_tune_overrides: dict[str, Any] | None,
) -> str:
    report(0.01, "assembling the training set", force=True)
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        task, tenant = run.task, run.tenant
        labels = list(task.labels)
        data = build_training_data(session, task, tenant, holdout_percent=settings.holdout_percent)
        champion = champions.champion_for(session, task.id, run.tenant_id)
        variant_tenants = [
            slug
            for (slug,) in session.execute(
                select(Tenant.slug)
                .join(ChampionSlot, ChampionSlot.tenant_id == Tenant.id)
                .where(ChampionSlot.task_id == task.id)
            )
        ]
        slas = sla_thresholds(session, task.id)
        task_name = task.name
        base = task.base_model or settings.base_model or None
    lineage = data.lineage()
    rung, why = choose_rung(data, settings)
    if rung is None:
        with db.session() as session:
            run = session.get(TrainingRun, run_id)
            assert run is not None
            run.status, run.decision, run.reasons = "succeeded", "skipped", [why]
            run.lineage, run.progress, run.message, run.finished_at = lineage, 1.0, "nothing to train", utcnow()
        return "succeeded"

    report(0.05, f"training the {rung.replace('_', '-')} rung on {len(data.train)} labels ({why})", force=True)
    h = data.holdout
    candidates: list[_Candidate] = []
    if data.tenant_id is None:
        from flywheel.retrain.classifiers import train_few_shot

        emb = embeddings_for(db, data.train.texts, base)
        head = train_few_shot(
            data.train.texts,
            data.train.labels,
            labels,
            base_model=base,
            seed=0,
            embeddings=emb,
            sample_weight=data.train.sample_weight,
        )
        candidates.append(_Candidate("few_shot", head, _evaluate(head, h.texts, h.labels, h.tenants, labels)))
        report(0.15, "few-shot head trained")
    if rung == "fine_tuned":
        from flywheel.retrain.finetune import fine_tune

        start = 0.15 if candidates else 0.05

        def scaled(fraction: float, message: str) -> None:
            report(start + (0.85 - start) * fraction, message)

        clf, stats = fine_tune(
            data.train.texts,
            data.train.labels,
            labels,
            config=_fine_tune_config(settings, base, fine_tune_overrides),
            progress=scaled,
            sample_weight=data.train.sample_weight,
        )
        candidates.append(_Candidate("fine_tuned", clf, _evaluate(clf, h.texts, h.labels, h.tenants, labels), stats))

    report(0.87, "evaluating on the holdout", force=True)
    policy = gate_policy(settings)

    def score(c: _Candidate) -> float:
        return gate.metric_value(c.evaluation["overall"], policy.metric) or 0.0

    # The richer rung must beat the frozen head on the holdout, or the head is the candidate (ties keep the head).
    best = max(candidates, key=score)
    champion_eval: dict[str, Any] | None = None
    champion_note = None
    if champion is not None:
        try:
            champion_eval = _evaluate(
                registry.load_model(champion, default_base=base), h.texts, h.labels, h.tenants, labels
            )
        except Exception as exc:
            champion_note = f"the champion {champion.version} could not be evaluated ({exc}); compared with none"
            log.warning(champion_note)
    clean = _finished_cleanly(best)
    variant_vs_shared = data.tenant_id is not None and (champion is None or champion.tenant_id is None)
    decision = gate.decide(
        best.evaluation,
        champion_eval,
        policy=policy,
        slas=slas,
        clean=clean,
        require_gain=variant_vs_shared,
        ignore_tenants=variant_tenants if data.tenant_id is None else (),
    )
    reasons = list(decision.reasons) + ([champion_note] if champion_note else [])

    optimization = None
    if best.rung == "fine_tuned" and h.texts:
        from flywheel.retrain.classifiers import verify_optimized

        report(0.9, "checking the optimized (INT8/bf16) variant against fp32 on the holdout", force=True)
        agreement, accepted = verify_optimized(best.classifier, h.texts)
        optimization = {"agreement": agreement, "accepted": accepted}

    metrics: dict[str, Any] = {
        "rung": best.rung,
        "metric": policy.metric,
        "candidate": best.evaluation,
        "champion": champion_eval,
        "champion_version": champion.version if champion else None,
        "alternatives": {c.rung: c.evaluation["overall"] for c in candidates if c is not best},
        "training": {k: v for k, v in best.stats.items() if k not in ("history", "class_weights")},
        "optimization": optimization,
    }
    report(0.93, "saving the model", force=True)
    artifact = _save_artifact(settings, task_name, run_id, best, metrics, lineage, data)
    report(0.97, "recording the decision", force=True)
    with db.session() as session:
        run = session.get(TrainingRun, run_id, with_for_update={"of": TrainingRun})
        assert run is not None
        if run.status != "running":  # marked abandoned meanwhile (e.g. a stalled heartbeat): do not promote
            shutil.rmtree(artifact, ignore_errors=True)
            return run.status
        task_row = session.get(Task, run.task_id)
        assert task_row is not None
        model = ModelVersion(
            task_id=run.task_id,
            tenant_id=run.tenant_id,
            version=registry.version_name(session, task_row, run.tenant),
            rung=best.rung,
            status="candidate",
            metrics={"holdout": best.evaluation, "optimization": optimization},
            lineage={**lineage, "training_run_id": run_id},
            artifact_path=str(artifact),
            base_model=base,
            training_run_id=run_id,
            created_at=utcnow(),
        )
        session.add(model)
        session.flush()
        if decision.promote:
            registry.promote(session, model.id)
        run.rung = best.rung
        run.model_id = model.id
        run.metrics = metrics
        run.lineage = lineage
        run.decision = decision.name
        run.reasons = reasons
        run.status = "succeeded" if decision.promote else "rejected"
        run.progress = 1.0
        run.message = f"{decision.name}: {model.version}"
        run.finished_at = utcnow()
        status = run.status
    report(1.0, f"{decision.name}")
    return status


def _finished_cleanly(candidate: _Candidate) -> bool:
    import math

    history = candidate.stats.get("history") or []
    for epoch in history:
        for value in (epoch or {}).values() if isinstance(epoch, dict) else ():
            if isinstance(value, float) and not math.isfinite(value):
                return False
    return True


def _save_artifact(
    settings: Settings,
    task_name: str,
    run_id: int,
    candidate: _Candidate,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    data: TrainingData,
) -> Path:
    """Write into a temporary directory and rename it into place, so no half-written artifact is ever referenced."""
    import json

    root = Path(settings.artifacts_dir).resolve() / task_name
    final = root / f"run-{run_id}-{candidate.rung}"
    tmp = root / f".tmp-run-{run_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    candidate.classifier.save(
        tmp, metadata={"lineage": lineage, "metrics": metrics["candidate"], "training_run_id": run_id}
    )
    (tmp / "lineage.json").write_text(
        json.dumps({"train_ids": data.train.ids, "holdout_ids": data.holdout.ids, **lineage}, indent=None)
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


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
    return list(session.scalars(select(Tenant).where(Tenant.id.in_(ids)).order_by(Tenant.id)))


def nightly_retrain(db: Database, settings: Settings, *, trigger: str = "nightly") -> list[int]:
    """Queue a run for every task's shared model and for every tenant with enough labels for its own variant.

    The shared runs come first (lower ids), so a tenant variant is compared with tonight's shared model.
    """
    queued: list[int] = []
    with db.session() as session:
        tasks = list(session.scalars(select(Task).order_by(Task.id)))
        for task in tasks:
            registry.ensure_zero_shot(session, task, settings)
            queued.append(queue_run(session, task, None, trigger=trigger).id)
        for task in tasks:
            for tenant in eligible_tenants(session, task.id, settings):
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
        .join(Feedback, Feedback.prediction_id == Prediction.id)
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
