"""One claimed training run, from its data to its final status, as named stages (after transformers' run_glue.py):

load the inputs → choose the rung → choose the text windows → train the candidates (each evaluated on the
holdout) → pick the best → evaluate the champion → judge (the gate) → check the optimized variant → save the
artifact → register the model version → promote it or not → finish the run.

Each stage returns a typed result; the dictionaries stored on the run, the model version and the artifact are
built from them at the very end, in the shapes the API has always returned. Nothing is written to the database
before the last stage, which registers, promotes and finishes in one transaction: a process killed mid-training
changes no champion. Queueing and claiming runs is ``jobs``'s; this module starts from a claimed run.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from flywheel.core.db import utcnow
from flywheel.domain import artifacts, champions
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.slas import Sla
from flywheel.models.training import ChampionSlot, ModelTrainingRow, ModelVersion, TrainingRun
from flywheel.retrain import gate, registry
from flywheel.retrain.dataset import LabeledSet, TrainingData, build_training_data, embeddings_for, windows_for
from flywheel.retrain.routing import QUEUE_GPU, Executor, owner, route_fine_tune

if TYPE_CHECKING:
    from flywheel.core.config import Settings
    from flywheel.core.db import Database
    from flywheel.domain.windows import TextWindows
    from flywheel.retrain.finetune import FineTuneConfig, FineTuneStats, Progress

log = logging.getLogger(__name__)

#: The kNN head is a candidate while the training set is at most this large (it keeps every training embedding).
KNN_MAX_TRAIN = 20_000


class Report(Protocol):
    """Where a run's progress goes (``jobs.RunReporter`` writes it to the run's row)."""

    def __call__(self, fraction: float, message: str, *, force: bool = False) -> None: ...


# --- typed stage results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInputs:
    """What a run reads before training: its scope, its data, and what the candidate is judged against."""

    run_id: int
    task_name: str
    base: str | None  # the base model; None: the packaged all-MiniLM-L6-v2
    data: TrainingData
    lineage: dict[str, Any]  # ``data.lineage()``, stored on the run, the model version and the artifact
    champion: ModelVersion | None  # the model serving the scope now (detached; its relationships are loaded)
    variant_tenants: list[str]  # tenants with a variant of their own: the shared model is not judged on them
    slas: dict[str, list[tuple[str, float]]]  # {tenant slug: [(metric, threshold)]}
    notes: list[str] = field(default_factory=list)  # why the run did what it did, beyond the gate (e.g. routing)
    # The embedding and fine-tuning windows chosen from the training texts (``choose_windows``); also in
    # ``lineage["text_windows"]``, so the run, the model version and the artifact record them.
    windows: TextWindows | None = None

    @property
    def is_variant(self) -> bool:
        """A tenant's own variant (else the task's shared model)."""
        return self.data.tenant_id is not None


@dataclass(frozen=True)
class Candidate:
    """A trained rung and its evaluation on the holdout; ``stats`` for a fine-tuned one."""

    rung: str
    classifier: Any
    evaluation: gate.Evaluation
    stats: FineTuneStats | None = None
    head: str | None = None  # "knn" for the nearest-neighbour head of the few-shot rung

    @property
    def name(self) -> str:
        """What the run records it as: the rung, or the kind of head (``knn``)."""
        return self.head or self.rung

    def finished_cleanly(self) -> bool:
        return self.stats is None or self.stats.finished_cleanly()

    def training_summary(self) -> dict[str, Any]:
        """The training statistics stored on the run (less the per-epoch history and class weights)."""
        stats = self.stats.to_dict() if self.stats is not None else {}
        return {k: v for k, v in stats.items() if k not in ("history", "class_weights")}


@dataclass(frozen=True)
class ChampionEvaluation:
    """The champion on the same holdout; ``evaluation`` None when there is none or it could not be evaluated."""

    version: str | None
    evaluation: gate.Evaluation | None
    note: str | None = None  # why it could not be evaluated


@dataclass(frozen=True)
class OptimizationCheck:
    """The optimized (INT8) variant against fp32 on the holdout: top-1 agreement, and whether it was accepted."""

    agreement: float
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        return {"agreement": self.agreement, "accepted": self.accepted}


@dataclass(frozen=True)
class RunMetrics:
    """What ``TrainingRun.metrics`` holds (``to_dict()``)."""

    rung: str
    metric: str
    candidate: gate.Evaluation
    champion: ChampionEvaluation
    alternatives: dict[str, gate.Metrics]  # the other rungs' overall holdout metrics
    training: dict[str, Any]
    optimization: OptimizationCheck | None
    gate: dict[str, Any] = field(default_factory=dict)  # the paired comparisons: ``gate_record``

    def to_dict(self) -> dict[str, Any]:
        champion = self.champion.evaluation
        return {
            "rung": self.rung,
            "metric": self.metric,
            "candidate": self.candidate.to_dict(),
            "champion": champion.to_dict() if champion is not None else None,
            "champion_version": self.champion.version,
            "alternatives": self.alternatives,
            "training": self.training,
            "optimization": self.optimization.to_dict() if self.optimization is not None else None,
            "gate": self.gate,
        }


# --- the run, stage by stage --------------------------------------------------------------------------------------


def train_and_gate(
    db: Database,
    settings: Settings,
    run_id: int,
    report: Report,
    fine_tune_overrides: dict[str, Any] | None = None,
    executor: Executor | None = None,
) -> str:
    """Train the next rung for a claimed run, gate it against the champion, register it, maybe promote it.
    Returns the run's final status (``queued`` when the run was handed to the gpu queue)."""
    report(0.01, "assembling the training set", force=True)
    inputs = load_inputs(db, settings, run_id)
    rung, why = choose_rung(inputs.data, settings)
    if rung == "fine_tuned":
        route, routing = route_fine_tune(db, settings, executor)
        if route == "gpu_queue":
            return hand_to_gpu_queue(db, run_id, routing)
        if route == "few_shot":
            inputs.notes.append(routing)
            rung, why = ("few_shot", routing) if not inputs.is_variant else (None, routing)
    if rung is None:
        return finish_skipped(db, inputs, why)
    inputs = choose_windows(inputs)
    report(0.05, f"training the {rung.replace('_', '-')} rung on {len(inputs.data.train)} labels ({why})", force=True)
    candidates = train_candidates(db, settings, inputs, rung, report, fine_tune_overrides)

    report(0.87, "evaluating on the holdout", force=True)
    policy = gate_policy(settings)
    champion = evaluate_champion(inputs)
    judged = [(c, judge(inputs, c, champion, policy)) for c in candidates]
    best, decision = best_candidate(judged, policy.metric)
    optimization = check_optimized(best, inputs.data.holdout, report)
    metrics = RunMetrics(
        rung=best.rung,
        metric=policy.metric,
        candidate=best.evaluation,
        champion=champion,
        alternatives={c.name: c.evaluation.overall for c in candidates if c is not best},
        training=best.training_summary(),
        optimization=optimization,
        gate=gate_record(judged, best, decision, policy.metric),
    )

    report(0.93, "saving the model", force=True)
    artifact = save_artifact(settings, inputs, best)
    report(0.97, "recording the decision", force=True)
    status = register_and_finish(db, inputs, best, metrics, decision, artifact)
    report(1.0, f"{decision.name}")
    return status


def load_inputs(db: Database, settings: Settings, run_id: int) -> RunInputs:
    """The run's training data and holdout, the champion it must beat, the tenants with variants, the SLAs."""
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        task = run.task
        data = build_training_data(
            session,
            task,
            run.tenant,
            holdout_percent=settings.holdout_percent,
            holdout_hygiene=settings.gate_holdout_hygiene,
        )
        champion = champions.champion_for(session, task.id, run.tenant_id)
        lineage = data.lineage()
        if champion is not None and champion.tainted and champion.tenant_id == run.tenant_id:
            # What this run is to replace: a champion that trained on records erased since.
            lineage["replaces_tainted"] = {"version": champion.version, "tainted_rows": champion.tainted_rows}
        return RunInputs(
            run_id=run_id,
            task_name=task.name,
            base=task.base_model or settings.base_model or None,
            data=data,
            lineage=lineage,
            champion=champion,
            variant_tenants=variant_tenants(session, task.id),
            slas=sla_thresholds(session, task.id),
        )


def variant_tenants(session: Session, task_id: int) -> list[str]:
    """Slugs of the tenants served by a variant of their own on this task."""
    return list(
        session.scalars(
            select(Tenant.slug)
            .join(ChampionSlot, ChampionSlot.tenant_id == Tenant.id)
            .where(ChampionSlot.task_id == task_id)
        )
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


def choose_windows(inputs: RunInputs) -> RunInputs:
    """The embedding and fine-tuning windows, chosen from the training texts' token lengths
    (``flywheel.domain.windows``), recorded in the lineage that the run, the model version and the artifact keep."""
    windows = windows_for(inputs.data.train.texts, inputs.base)
    return replace(inputs, windows=windows, lineage={**inputs.lineage, "text_windows": windows.to_dict()})


def train_candidates(
    db: Database,
    settings: Settings,
    inputs: RunInputs,
    rung: str,
    report: Report,
    fine_tune_overrides: dict[str, Any] | None,
) -> list[Candidate]:
    """The few-shot heads (shared models only: logistic regression, and the kNN head while the training set is at
    most ``KNN_MAX_TRAIN``), then the fine-tuned rung when the data supports it."""
    candidates: list[Candidate] = []
    window = inputs.windows.embedding if inputs.windows is not None else None
    if not inputs.is_variant:
        embeddings = embeddings_for(db, inputs.data.train.texts, inputs.base, window)
        candidates.append(train_few_shot_candidate(inputs, embeddings))
        if len(inputs.data.train) <= KNN_MAX_TRAIN:
            candidates.append(train_knn_candidate(inputs, embeddings))
        report(0.15, "few-shot heads trained")
    if rung == "fine_tuned":
        start = 0.15 if candidates else 0.05

        def scaled(fraction: float, message: str) -> None:
            report(start + (0.85 - start) * fraction, message)

        window = inputs.windows.fine_tuning if inputs.windows is not None else None
        config = fine_tune_config(settings, inputs.base, fine_tune_overrides, window)
        if window is not None and config.max_length != window:
            inputs.notes.append(
                f"fine-tuning window {config.max_length} set by configuration (the data chose {window})"
            )
        candidates.append(train_fine_tuned_candidate(inputs, config, scaled))
    return candidates


def train_few_shot_candidate(inputs: RunInputs, embeddings: Any) -> Candidate:
    """Logistic regression on the cached frozen embeddings of the training texts."""
    from flywheel.retrain.classifiers import train_few_shot

    train = inputs.data.train
    head = train_few_shot(
        train.texts,
        train.labels,
        inputs.data.labels,
        base_model=inputs.base,
        seed=0,
        embeddings=embeddings,
        sample_weight=train.sample_weight,
        embed_window=inputs.windows.embedding if inputs.windows is not None else None,
    )
    return Candidate("few_shot", head, evaluate_on_holdout(head, inputs.data))


def train_knn_candidate(inputs: RunInputs, embeddings: Any) -> Candidate:
    """The nearest-neighbour head on the same embeddings: nothing to fit, so cheap while the set is small."""
    from flywheel.retrain.classifiers import train_knn

    head = train_knn(
        inputs.data.train.labels,
        inputs.data.labels,
        embeddings=embeddings,
        base_model=inputs.base,
        embed_window=inputs.windows.embedding if inputs.windows is not None else None,
    )
    return Candidate("few_shot", head, evaluate_on_holdout(head, inputs.data), head="knn")


def train_fine_tuned_candidate(inputs: RunInputs, config: FineTuneConfig, progress: Progress) -> Candidate:
    """The whole encoder and a classification head, fine-tuned on the training texts."""
    from flywheel.retrain.finetune import fine_tune

    train = inputs.data.train
    clf, stats = fine_tune(
        train.texts,
        train.labels,
        inputs.data.labels,
        config=config,
        progress=progress,
        sample_weight=train.sample_weight,
    )
    return Candidate("fine_tuned", clf, evaluate_on_holdout(clf, inputs.data), stats)


def fine_tune_config(
    settings: Settings, base: str | None, overrides: dict[str, Any] | None, window: int | None = None
) -> FineTuneConfig:
    """Seed 0, the configured epochs and the chosen fine-tuning ``window``, then the deployment's ``fine_tune``
    settings, then the caller's overrides."""
    from flywheel.retrain.finetune import FineTuneConfig

    values: dict[str, Any] = {"base_model": base, "seed": 0, "epochs": settings.fine_tune_epochs, "max_length": window}
    values.update(settings.extra.get("fine_tune") or {})  # FineTuneConfig fields, e.g. from a deployment's config
    values.update(overrides or {})
    return FineTuneConfig(**values)


def evaluate_on_holdout(clf: Any, data: TrainingData) -> gate.Evaluation:
    """A classifier's metrics on the holdout, overall and per tenant, each item at its weight (holdout hygiene:
    flagged, unreviewed labels below 1; every other item 1)."""
    import numpy as np

    holdout = data.holdout
    if not holdout.texts:
        return gate.Evaluation(overall={"n": 0.0})
    proba = clf.predict_proba(holdout.texts, batch_size=64)
    cols = list(clf.labels)
    pred = [cols[i] for i in np.asarray(proba).argmax(axis=1)]
    return gate.evaluate_predictions(holdout.labels, pred, holdout.tenants, data.labels, holdout.weights)


def gate_policy(settings: Settings) -> gate.GatePolicy:
    return gate.GatePolicy(
        metric=settings.gate_metric,
        tolerance=settings.gate_tolerance,
        tenant_tolerance=settings.gate_tenant_tolerance,
        min_tenant_holdout=settings.gate_min_tenant_holdout,
    )


def best_candidate(judged: list[tuple[Candidate, gate.Decision]], metric: str) -> tuple[Candidate, gate.Decision]:
    """The best candidate by the gate's rule: one the gate promotes before one it refuses, then the highest lower
    bound of the paired difference with the champion (the one most surely better), or, with no champion to pair
    with, the highest holdout value. Ties keep the earlier, cheaper rung (the frozen head before fine-tuning)."""

    def rank(item: tuple[Candidate, gate.Decision]) -> tuple[bool, float]:
        candidate, decision = item
        if decision.paired is not None:
            return decision.promote, decision.paired.overall.ci_low
        return decision.promote, candidate.evaluation.value(metric) or 0.0

    return max(judged, key=rank)


def gate_record(
    judged: list[tuple[Candidate, gate.Decision]], best: Candidate, decision: gate.Decision, metric: str
) -> dict[str, Any]:
    """What the run's ``decision`` carries: the chosen candidate's paired comparison with the champion (overall and
    per tenant; None without a champion) and every candidate's, with what the gate said of each."""
    return {
        "paired": decision.paired.to_dict() if decision.paired is not None else None,
        "candidates": [
            {
                "rung": c.rung,
                "head": c.name,
                "value": c.evaluation.value(metric),
                "verdict": d.name,
                "chosen": c is best,
                "paired": d.paired.to_dict() if d.paired is not None else None,
            }
            for c, d in judged
        ],
    }


def evaluate_champion(inputs: RunInputs) -> ChampionEvaluation:
    """The champion on the same holdout; one that cannot be loaded is noted and compared with as none."""
    champion = inputs.champion
    if champion is None:
        return ChampionEvaluation(version=None, evaluation=None)
    try:
        clf = registry.load_model(champion, default_base=inputs.base)
        return ChampionEvaluation(champion.version, evaluate_on_holdout(clf, inputs.data))
    except Exception as exc:
        note = f"the champion {champion.version} could not be evaluated ({exc}); compared with none"
        log.warning(note)
        return ChampionEvaluation(champion.version, None, note)


def judge(inputs: RunInputs, best: Candidate, champion: ChampionEvaluation, policy: gate.GatePolicy) -> gate.Decision:
    """The gate's decision on the best candidate. A tenant variant replacing the shared model must beat it; the
    shared model is not judged on tenants that have variants of their own."""
    shared = inputs.champion is None or inputs.champion.tenant_id is None
    decision = gate.decide(
        best.evaluation,
        champion.evaluation,
        policy=policy,
        slas=inputs.slas,
        clean=best.finished_cleanly(),
        require_gain=inputs.is_variant and shared,
        ignore_tenants=() if inputs.is_variant else inputs.variant_tenants,
    )
    if champion.note is None:
        return decision
    return gate.Decision(decision.promote, [*decision.reasons, champion.note], decision.paired)


def check_optimized(best: Candidate, holdout: LabeledSet, report: Report) -> OptimizationCheck | None:
    """A fine-tuned candidate's optimized (INT8/bf16) variant against fp32 on the holdout; None for other rungs."""
    if best.rung != "fine_tuned" or not holdout.texts:
        return None
    from flywheel.retrain.classifiers import verify_optimized

    report(0.9, "checking the optimized (INT8/bf16) variant against fp32 on the holdout", force=True)
    agreement, accepted = verify_optimized(best.classifier, holdout.texts)
    return OptimizationCheck(agreement=agreement, accepted=accepted)


def save_artifact(settings: Settings, inputs: RunInputs, best: Candidate) -> str:
    """Write into a temporary directory and rename it into place (or, on a remote store, upload it with its
    completion marker last), so no half-written artifact is ever referenced. Returns its location."""
    import json
    import tempfile

    run_id, data = inputs.run_id, inputs.data
    name = f"run-{run_id}-{best.name}"
    remote = artifacts.is_remote(settings.artifacts_dir)
    root = (
        Path(tempfile.mkdtemp(prefix="flywheel-artifact-"))
        if remote
        else Path(artifacts.join(settings.artifacts_dir, inputs.task_name))
    )
    final = root / name
    tmp = root / f".tmp-run-{run_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    best.classifier.save(
        tmp,
        metadata={"lineage": inputs.lineage, "metrics": best.evaluation.to_dict(), "training_run_id": run_id},
    )
    (tmp / "lineage.json").write_text(
        json.dumps(
            {
                "train_ids": data.train.ids,
                "holdout_ids": data.holdout.ids,
                "holdout_item_weights": data.holdout.weights,
                **inputs.lineage,
            },
            indent=None,
        )
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if not remote:
        return str(final)
    try:
        return artifacts.publish(final, artifacts.join(settings.artifacts_dir, inputs.task_name, name))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def hand_to_gpu_queue(db: Database, run_id: int, why: str) -> str:
    """Give the claimed run back as ``queued`` on the ``gpu`` queue (the claim is returned, not counted as an
    attempt); the caller sends the nudge. Nothing was trained or written yet."""
    with db.session() as session:
        run = session.get(TrainingRun, run_id, with_for_update={"of": TrainingRun})
        assert run is not None
        if run.status == "running" and (run.host, run.pid) == owner():
            run.status, run.queue, run.host, run.pid = "queued", QUEUE_GPU, None, None
            run.started_at = run.heartbeat_at = run.dispatched_at = None
            run.attempts = max(run.attempts - 1, 0)
            run.progress, run.message = 0.0, why[:500]
        return run.status


def register_and_finish(
    db: Database,
    inputs: RunInputs,
    best: Candidate,
    metrics: RunMetrics,
    decision: gate.Decision,
    artifact: str,
) -> str:
    """Register the model version, promote it if the gate said so, and finish the run: one transaction, guarded by
    the claim. A run released meanwhile (a stalled heartbeat; queued again and perhaps claimed by another worker)
    registers and promotes nothing here and its artifact is removed: exactly one model version per run."""
    with db.session() as session:
        run = session.get(TrainingRun, inputs.run_id, with_for_update={"of": TrainingRun})
        assert run is not None
        if run.status != "running" or (run.host, run.pid) != owner():
            artifacts.delete(artifact)
            return run.status
        model = register_model(session, run, inputs, best, metrics, artifact)
        if decision.promote:
            registry.promote(session, model.id)
        finish_run(run, model, inputs, metrics, decision)
        return run.status


def register_model(
    session: Session, run: TrainingRun, inputs: RunInputs, best: Candidate, metrics: RunMetrics, artifact: str
) -> ModelVersion:
    """The candidate as a new model version of the run's scope (status ``candidate``)."""
    task = session.get(Task, run.task_id)
    assert task is not None
    model = ModelVersion(
        task_id=run.task_id,
        tenant_id=run.tenant_id,
        version=registry.version_name(session, task, run.tenant),
        rung=best.rung,
        status="candidate",
        metrics={
            "holdout": best.evaluation.to_dict(),
            "optimization": metrics.optimization.to_dict() if metrics.optimization is not None else None,
        },
        lineage={**inputs.lineage, "training_run_id": run.id},
        artifact_path=artifact,
        base_model=inputs.base,
        training_run_id=run.id,
        created_at=utcnow(),
    )
    session.add(model)
    session.flush()
    record_training_rows(session, model.id, inputs.data.train.ids)
    return model


def record_training_rows(session: Session, model_id: int, prediction_ids: list[int]) -> None:
    """The lineage erasure follows: one row per prediction that trained the model (``ModelTrainingRow``), inserted
    as one ``executemany`` batch. Rows erased while the run trained are skipped: they must not be recorded as
    present, and the model is tainted by them instead."""
    existing: list[int] = []
    for start in range(0, len(prediction_ids), 500):
        chunk = prediction_ids[start : start + 500]
        existing += session.scalars(select(Prediction.id).where(Prediction.id.in_(chunk)))
    if existing:
        session.execute(insert(ModelTrainingRow), [{"model_id": model_id, "prediction_id": pid} for pid in existing])
    gone = len(set(prediction_ids)) - len(set(existing))
    if gone:
        model = session.get(ModelVersion, model_id)
        assert model is not None
        model.tainted_rows, model.tainted_at = gone, utcnow()


def finish_run(
    run: TrainingRun, model: ModelVersion, inputs: RunInputs, metrics: RunMetrics, decision: gate.Decision
) -> None:
    """Record the outcome on the run: ``succeeded`` when promoted, ``rejected`` when the gate refused."""
    run.rung = metrics.rung
    run.model_id = model.id
    run.metrics = metrics.to_dict()
    run.lineage = inputs.lineage
    run.decision = decision.name
    run.reasons = [*inputs.notes, *decision.reasons]
    run.status = "succeeded" if decision.promote else "rejected"
    run.progress = 1.0
    run.message = f"{decision.name}: {model.version}"
    run.finished_at = utcnow()


def finish_skipped(db: Database, inputs: RunInputs, why: str) -> str:
    """Nothing to train (too few clean labels): the run succeeds with the decision ``skipped``."""
    with db.session() as session:
        run = session.get(TrainingRun, inputs.run_id)
        assert run is not None
        run.status, run.decision, run.reasons = "succeeded", "skipped", list(dict.fromkeys([*inputs.notes, why]))
        run.lineage, run.progress, run.message, run.finished_at = inputs.lineage, 1.0, "nothing to train", utcnow()
    return "succeeded"
