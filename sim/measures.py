"""What a simulated day is scored by: the champion's accuracy on the untouched test split, what the gate saw for
each training run, and the label-quality pass against the wrong labels the plan injected."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from flywheel.domain import champions
from flywheel.feedback.results import excluded_client_ids, flagged_client_ids
from flywheel.models.training import ModelVersion, TrainingRun
from sim.scenario import TASK
from sim.traffic import Plan


@dataclass(frozen=True)
class GateRecord:
    """What the gate saw for one training run: its decision and the holdout metric of candidate and champion."""

    run: int
    tenant: str | None
    status: str
    decision: str | None
    rung: str | None
    metric: str
    candidate: float | None
    champion: float | None


def gate_record(run: TrainingRun) -> GateRecord:
    metrics = run.metrics or {}
    name = metrics.get("metric", "accuracy")

    def overall(key: str) -> float | None:
        evaluation = metrics.get(key) or {}
        value = (evaluation.get("overall") or {}).get(name)
        return None if value is None else float(value)

    return GateRecord(
        run=run.id,
        tenant=run.tenant.slug if run.tenant else None,
        status=run.status,
        decision=run.decision,
        rung=run.rung,
        metric=name,
        candidate=overall("candidate"),
        champion=overall("champion"),
    )


#: What a night's gate did against the clean test split: promoted a model worse than the champion it replaced,
#: refused one better than the champion it was judged against, or neither.
GATE_PROMOTED_WORSE = "promoted_worse"
GATE_REFUSED_BETTER = "refused_better"
GATE_RIGHT = "right"


def gate_verdict(promoted: bool, champion_before: float, trained: float | None) -> str | None:
    """Judge the night's gate decision on the shared model by the clean test split: ``trained`` is tonight's
    candidate's accuracy there, ``champion_before`` the accuracy of the champion it was gated against (None: no
    candidate tonight)."""
    if trained is None:
        return None
    if promoted and trained < champion_before:
        return GATE_PROMOTED_WORSE
    if not promoted and trained > champion_before:
        return GATE_REFUSED_BETTER
    return GATE_RIGHT


def shared_champion(session: Session, task_id: int) -> ModelVersion:
    model = champions.champion_for(session, task_id, None)
    assert model is not None, "every task has a champion from day one (zero-shot)"
    return model


class TestSplitScorer:
    """Models' accuracy on the untouched test split, each model version scored once."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, plan: Plan) -> None:
        self.texts = plan.test_texts
        self.labels = plan.test_labels
        self._scores: dict[str, float] = {}

    def accuracy(self, model: ModelVersion) -> float:
        from flywheel.retrain import registry

        key = str(model.artifact_path or model.version)
        if key not in self._scores:
            clf = registry.load_model(model)
            proba = np.asarray(clf.predict_proba(self.texts))
            predicted = [clf.labels[i] for i in proba.argmax(axis=1)]
            self._scores[key] = float(np.mean([p == y for p, y in zip(predicted, self.labels, strict=True)]))
        return self._scores[key]

    def trained_accuracy(self, session: Session, runs: list[TrainingRun]) -> float | None:
        """Tonight's shared model on the test split, whether the gate promoted it or not (None: none trained)."""
        shared = [r for r in runs if r.tenant_id is None and r.model_id is not None]
        if not shared:
            return None
        model = session.get(ModelVersion, shared[-1].model_id)
        return None if model is None else self.accuracy(model)


@dataclass(frozen=True)
class LabelIssueScores:
    """Against the injected wrong labels: precision and recall of the flagged label issues (what goes to review)
    and of the labels left out of training (flagged ones the evidence supports, and unreliable sources' labels)."""

    label_issue_precision: float | None = None
    label_issue_recall: float | None = None
    excluded_precision: float | None = None
    excluded_recall: float | None = None
    n_flagged: int | None = None
    n_excluded: int | None = None


def precision_recall(chosen: set[str], wrong: set[str]) -> tuple[float | None, float | None]:
    if not chosen and not wrong:
        return None, None
    tp = len(chosen & wrong)
    return (tp / len(chosen) if chosen else None), (tp / len(wrong) if wrong else None)


def label_issue_scores(session: Session, plan: Plan, corrected: set[str]) -> LabelIssueScores:
    """The label-quality results in the database against the plan's wrong labels. ``corrected``: items a reviewer
    has decided, whose label is no longer the injected one (left out of both)."""
    flagged = flagged_client_ids(session, TASK)
    excluded = excluded_client_ids(session, TASK)
    wrong = plan.wrong_ids - corrected
    p, r = precision_recall(flagged, wrong)
    ep, er = precision_recall(excluded, wrong)
    return LabelIssueScores(p, r, ep, er, len(flagged), len(excluded))
