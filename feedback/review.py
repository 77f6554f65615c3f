"""The review queue (human in the loop) and reviewer decisions.

- ``label_issue``: labeled predictions, likely label errors first (flagged, then lowest cleanlab label quality).
- ``uncertain``: unlabeled predictions whose label would teach the model most (ActiveLab scores from the latest pass;
  before any pass, the smallest margin between the two most probable labels the model logged).

A decision is recorded as feedback with ``source: reviewer`` (an audit trail, never an in-place edit); the
effective label is then re-derived (a reviewer decision beats every other source).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.core.errors import Unprocessable
from flywheel.domain.training_labels import reviewed
from flywheel.models.label_quality import LabelQualityResult
from flywheel.models.records import Feedback, Prediction, Task

KINDS = ("label_issue", "uncertain")
DECISIONS = ("keep", "relabel", "discard")
FALLBACK_SCAN = 2000  # unlabeled predictions ranked by margin when no pass has run yet


@dataclass
class ReviewEntry:
    prediction_id: int
    client_id: str
    text: str
    label: str
    feedback: list[dict[str, Any]]
    effective_label: str | None
    suggested_label: str | None
    quality: float | None
    reason: str


def _feedback_of(session: Session, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if ids:
        for fb in session.scalars(
            select(Feedback).where(Feedback.prediction_id.in_(ids)).order_by(Feedback.created_at, Feedback.id)
        ):
            out[fb.prediction_id].append(
                {
                    "id": fb.client_id,
                    "label": fb.label,
                    "source": fb.source,
                    "source_id": fb.source_id,
                    "decision": fb.decision,
                    "note": fb.note,
                    "created_at": fb.created_at,
                }
            )
    return out


def review_queue(session: Session, *, tenant_id: int, task_id: int, kind: str, limit: int) -> list[ReviewEntry]:
    """The ``limit`` items most worth a person's time, best first (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if kind == "label_issue":
        return _label_issues(session, tenant_id, task_id, limit)
    return _uncertain(session, tenant_id, task_id, limit)


def _label_issues(session: Session, tenant_id: int, task_id: int, limit: int) -> list[ReviewEntry]:
    rows = session.execute(
        select(Prediction, LabelQualityResult)
        .join(LabelQualityResult, LabelQualityResult.prediction_id == Prediction.id)
        .where(
            LabelQualityResult.tenant_id == tenant_id,
            LabelQualityResult.task_id == task_id,
            LabelQualityResult.kind == "labeled",
            LabelQualityResult.given_label == Prediction.effective_label,
            Prediction.label_discarded.is_(False),
            ~reviewed(),
        )
        .order_by(LabelQualityResult.is_issue.desc(), LabelQualityResult.quality.asc(), Prediction.id)
        .limit(limit)
    ).all()
    if not rows and not _has_results(session, tenant_id, task_id):
        return _disagreements(session, tenant_id, task_id, limit)
    fb = _feedback_of(session, [p.id for p, _ in rows])
    out = []
    for p, r in rows:
        if r.is_issue:
            reason = f"likely label error: the model says '{r.suggested_label}' (label quality {r.quality:.3f})"
            # the pass leaves a flagged label out of training only where the evidence is strong enough
            reason += "; left out of training" if r.exclude_reason == "label_issue" else "; still trains until reviewed"
        else:
            reason = f"low label quality ({r.quality:.3f}), not flagged"
        out.append(
            ReviewEntry(
                p.id, p.client_id, p.text, p.label, fb[p.id], p.effective_label, r.suggested_label, r.quality, reason
            )
        )
    return out


def _has_results(session: Session, tenant_id: int, task_id: int) -> bool:
    return (
        session.scalar(
            select(LabelQualityResult.id)
            .where(LabelQualityResult.tenant_id == tenant_id, LabelQualityResult.task_id == task_id)
            .limit(1)
        )
        is not None
    )


def _disagreements(session: Session, tenant_id: int, task_id: int, limit: int) -> list[ReviewEntry]:
    """Before any pass: labels that contradict a confident prediction, most confident first."""
    preds = list(
        session.scalars(
            select(Prediction)
            .where(
                Prediction.tenant_id == tenant_id,
                Prediction.task_id == task_id,
                Prediction.effective_label.is_not(None),
                Prediction.effective_label != Prediction.label,
                Prediction.label_discarded.is_(False),
                ~reviewed(),
            )
            .order_by(Prediction.confidence.desc(), Prediction.id)
            .limit(limit)
        )
    )
    fb = _feedback_of(session, [p.id for p in preds])
    return [
        ReviewEntry(
            p.id,
            p.client_id,
            p.text,
            p.label,
            fb[p.id],
            p.effective_label,
            p.label,
            None,
            "no label-quality pass yet: the label contradicts a confident prediction",
        )
        for p in preds
    ]


def _uncertain(session: Session, tenant_id: int, task_id: int, limit: int) -> list[ReviewEntry]:
    unlabeled = (
        Prediction.tenant_id == tenant_id,
        Prediction.task_id == task_id,
        Prediction.feedback_count == 0,
        Prediction.effective_label.is_(None),
        Prediction.label_discarded.is_(False),
    )
    rows = session.execute(
        select(Prediction, LabelQualityResult.active_score)
        .join(LabelQualityResult, LabelQualityResult.prediction_id == Prediction.id)
        .where(*unlabeled, LabelQualityResult.kind == "unlabeled")
        .order_by(LabelQualityResult.active_score.asc(), Prediction.id)
        .limit(limit)
    ).all()
    if rows:
        return [
            ReviewEntry(
                p.id,
                p.client_id,
                p.text,
                p.label,
                [],
                None,
                p.label,
                None,
                f"ActiveLab: labeling it would teach the model most (score {score:.3f})",
            )
            for p, score in rows
        ]
    # No pass yet: margin between the two most probable labels the model logged (the smallest first).
    preds = list(
        session.scalars(
            select(Prediction)
            .where(*unlabeled)
            .order_by(Prediction.created_at.desc(), Prediction.id.desc())
            .limit(FALLBACK_SCAN)
        )
    )
    margins = np.array([_margin(p) for p in preds])
    order = np.argsort(margins, kind="stable")[:limit]
    return [
        ReviewEntry(
            preds[i].id,
            preds[i].client_id,
            preds[i].text,
            preds[i].label,
            [],
            None,
            preds[i].label,
            None,
            f"the model is unsure: margin {margins[i]:.3f} between its two likeliest labels",
        )
        for i in order
    ]


def _margin(p: Prediction) -> float:
    values = sorted((p.probabilities or {}).values(), reverse=True)
    if len(values) >= 2:
        return float(values[0] - values[1])
    top = values[0] if values else p.confidence
    return float(top - (1 - top))


def record_decision(
    session: Session,
    prediction: Prediction,
    *,
    decision: str,
    label: str | None = None,
    note: str | None = None,
    reviewer: str,
) -> Feedback:
    """Store a reviewer's ``keep`` / ``relabel`` / ``discard`` as feedback (``source: reviewer``).

    ``keep`` confirms the current effective label (or the predicted one when nobody labeled it); ``relabel`` needs
    a label of the task; ``discard`` stores no label and removes the prediction from training and SLA figures.
    """
    from flywheel.domain.ingest import record_feedback

    task = session.get(Task, prediction.task_id)
    assert task is not None
    if decision not in DECISIONS:
        raise Unprocessable(
            f"decision must be one of {', '.join(DECISIONS)}",
            errors=[{"loc": ["decision"], "msg": f"'{decision}' is not one of {', '.join(DECISIONS)}"}],
        )
    if decision == "relabel":
        if label is None:
            raise Unprocessable("a relabel needs a label", errors=[{"loc": ["label"], "msg": "required for relabel"}])
        if label not in task.labels:
            raise Unprocessable(
                f"'{label}' is not a label of task '{task.name}'",
                errors=[{"loc": ["label"], "msg": f"'{label}' is not a label of task '{task.name}'"}],
            )
    elif label is not None:
        raise Unprocessable(
            f"a '{decision}' decision takes no label",
            errors=[{"loc": ["label"], "msg": f"only a relabel takes a label, not '{decision}'"}],
        )
    stored_label = {
        "keep": prediction.effective_label or prediction.label,
        "relabel": label,
        "discard": None,
    }[decision]
    return record_feedback(
        session,
        prediction,
        client_id=f"review-{prediction.id}-{uuid.uuid4().hex[:12]}",
        label=stored_label,
        source="reviewer",
        source_id=reviewer,
        decision=decision,
        note=note,
    )
