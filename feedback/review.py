"""The review queue (human in the loop) and reviewer decisions.

- ``label_issue``: labeled predictions, likely label errors first: flagged holdout labels (they decide every
  promotion and SLA verdict), then the other flagged labels, then the rest, each group by lowest cleanlab label
  quality.
- ``uncertain``: unlabeled predictions whose label would teach the model most (ActiveLab scores from the latest pass;
  before any pass, the smallest margin between the two most probable labels the model logged).

A decision is recorded as feedback with ``source: reviewer`` (an audit trail, never an in-place edit); the
effective label is then re-derived (a reviewer decision beats every other source).
"""

from __future__ import annotations

import math
import re
import struct
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, case, func, literal, or_, select
from sqlalchemy.orm import Session

from flywheel.core.errors import Unprocessable
from flywheel.domain.partitions import feedback_of
from flywheel.domain.schemas import REVIEW_CURSOR_PATTERN
from flywheel.domain.training_labels import reviewed, same_scope
from flywheel.models.label_quality import LabelQualityResult
from flywheel.models.records import Feedback, Prediction, Task

KINDS = ("label_issue", "uncertain")
DECISIONS = ("keep", "relabel", "discard")
FALLBACK_SCAN = 2000  # unlabeled predictions ranked by margin when no pass has run yet
MAX_ROW_ID = 2**31 - 1  # row ids are 32-bit integers


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


def _feedback_of(session: Session, preds: Sequence[Prediction]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if preds:
        for fb in session.scalars(
            select(Feedback)
            .where(feedback_of((p.id, p.created_at) for p in preds))
            .order_by(Feedback.created_at, Feedback.id)
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


#: The queue's groups, first to last: ``group`` of a label_issue row (an unlabeled one is always ``UNFLAGGED``).
FLAGGED_HOLDOUT, FLAGGED, UNFLAGGED = 2, 1, 0


@dataclass(frozen=True)
class QueuePosition:
    """Where a page of the queue ended: the last item's sort key (``group`` descending: flagged holdout labels, other
    flagged labels, the rest; then ``score`` ascending: label quality or ActiveLab score) and its prediction id. Its
    cursor carries the score's exact bits, so no rounding can skip or repeat an item across pages."""

    group: int
    score: float
    prediction_id: int

    def cursor(self) -> str:
        return f"{self.group}_{struct.pack('>d', self.score).hex()}_{self.prediction_id}"

    @classmethod
    def parse(cls, cursor: str) -> QueuePosition:
        if not re.fullmatch(REVIEW_CURSOR_PATTERN, cursor):
            raise Unprocessable("invalid cursor", errors=[{"loc": ["query", "cursor"], "msg": "not a review cursor"}])
        group, bits, pid = cursor.split("_")
        score = struct.unpack(">d", bytes.fromhex(bits))[0]
        # Beyond every score or row id: the same position as the largest one a database holds (nothing after).
        score = math.inf if math.isnan(score) else score
        return cls(int(group), score, min(int(pid), MAX_ROW_ID))


@dataclass(frozen=True)
class ReviewPage:
    entries: list[ReviewEntry]
    next_cursor: str | None  # None: nothing after this page (or, before any pass, no paging: the top items only)


def review_queue(session: Session, *, tenant_id: int, task_id: int, kind: str, limit: int) -> list[ReviewEntry]:
    """The ``limit`` items most worth a person's time, best first (see the module docstring)."""
    return review_page(session, tenant_id=tenant_id, task_id=task_id, kind=kind, limit=limit).entries


def review_page(
    session: Session, *, tenant_id: int, task_id: int, kind: str, limit: int, cursor: str | None = None
) -> ReviewPage:
    """One page of the queue, after the page whose ``next_cursor`` is ``cursor``: pages reach every item once."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    after = QueuePosition.parse(cursor) if cursor else None
    if kind == "label_issue":
        return _label_issues(session, tenant_id, task_id, limit, after)
    return _uncertain(session, tenant_id, task_id, limit, after)


def _after(group: Any, score: Any, pid: Any, after: QueuePosition | None) -> list[Any]:
    """The keyset condition: rows sorting after ``after`` (a later group, or the same group by score, then id)."""
    if after is None:
        return []
    same_group = (group == after.group) & (
        (score > after.score) | ((score == after.score) & (pid > after.prediction_id))
    )
    return [or_(same_group, group < after.group)]


def _group() -> Any:
    """The label_issue group of a result row: ``FLAGGED_HOLDOUT``, ``FLAGGED`` or ``UNFLAGGED``."""
    return case(
        (LabelQualityResult.is_issue.is_(True) & LabelQualityResult.holdout.is_(True), FLAGGED_HOLDOUT),
        (LabelQualityResult.is_issue.is_(True), FLAGGED),
        else_=UNFLAGGED,
    )


def _next(rows: Sequence[Any], limit: int, key: Callable[[Any], QueuePosition]) -> str | None:
    return key(rows[limit - 1]).cursor() if len(rows) > limit else None


def _label_issues(
    session: Session, tenant_id: int, task_id: int, limit: int, after: QueuePosition | None
) -> ReviewPage:
    quality = func.coalesce(LabelQualityResult.quality, 1.0)  # unscored last, on every database
    group = _group()
    rows = session.execute(
        select(Prediction, LabelQualityResult)
        .join(LabelQualityResult, LabelQualityResult.prediction_id == Prediction.id)
        .where(
            LabelQualityResult.tenant_id == tenant_id,
            LabelQualityResult.task_id == task_id,
            LabelQualityResult.kind == "labeled",
            LabelQualityResult.given_label == Prediction.effective_label,
            *same_scope(tenant_id, task_id),
            Prediction.label_discarded.is_(False),
            ~reviewed(),
            *_after(group, quality, Prediction.id, after),
        )
        .order_by(group.desc(), quality.asc(), Prediction.id)
        .limit(limit + 1)
    ).all()
    if not rows and after is None and not _has_results(session, tenant_id, task_id):
        return ReviewPage(_disagreements(session, tenant_id, task_id, limit), None)
    next_cursor = _next(rows, limit, lambda row: QueuePosition(_group_of(row[1]), _or_one(row[1].quality), row[0].id))
    rows = rows[:limit]
    fb = _feedback_of(session, [p for p, _ in rows])
    out = []
    for p, r in rows:
        reason = _issue_reason(r)
        out.append(
            ReviewEntry(
                p.id, p.client_id, p.text, p.label, fb[p.id], p.effective_label, r.suggested_label, r.quality, reason
            )
        )
    return ReviewPage(out, next_cursor)


def _group_of(r: LabelQualityResult) -> int:
    return (FLAGGED_HOLDOUT if r.holdout else FLAGGED) if r.is_issue else UNFLAGGED


def _issue_reason(r: LabelQualityResult) -> str:
    """Why a label is in the queue: a flagged holdout label, a flagged training label, or a low-quality one."""
    if r.is_issue and r.holdout:
        return (
            f"likely label error in the holdout: the model says '{r.suggested_label}' (label quality {r.quality:.3f});"
            f" it judges every promotion and SLA, and counts at weight {_or_one(r.train_weight):.2f} until reviewed"
        )
    if r.is_issue:
        reason = f"likely label error: the model says '{r.suggested_label}' (label quality {r.quality:.3f})"
        # the pass leaves a flagged label out of training only where the evidence is strong enough
        return reason + (
            "; left out of training" if r.exclude_reason == "label_issue" else "; still trains until reviewed"
        )
    where = "holdout label" if r.holdout else "label"
    return f"low {where} quality ({r.quality:.3f}), not flagged"


def _or_one(score: float | None) -> float:
    return 1.0 if score is None else float(score)


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
    fb = _feedback_of(session, preds)
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


def _ranked(
    session: Session,
    tenant_id: int,
    task_id: int,
    limit: int,
    after: QueuePosition | None,
    unlabeled: tuple[ColumnElement[bool], ...],
) -> list[tuple[Prediction, float | None]]:
    """Up to ``limit + 1`` still-unlabeled predictions in the pass's ActiveLab order, after ``after``.

    The ranking (one scope's few thousand rows) is read in order and the predictions it names are fetched by id,
    dropping those labeled since the pass: the predictions table is read for the items shown, not for every
    prediction of the tenant (on partitioned PostgreSQL, every month of it)."""
    score = func.coalesce(LabelQualityResult.active_score, 1.0)
    out: list[tuple[Prediction, float | None]] = []
    step = 2 * limit + 1
    while len(out) <= limit:
        batch = session.execute(
            select(LabelQualityResult.prediction_id, LabelQualityResult.active_score)
            .where(
                LabelQualityResult.tenant_id == tenant_id,
                LabelQualityResult.task_id == task_id,
                LabelQualityResult.kind == "unlabeled",
                *_after(literal(UNFLAGGED), score, LabelQualityResult.prediction_id, after),
            )
            .order_by(score.asc(), LabelQualityResult.prediction_id)
            .limit(step)
        ).all()
        ids = [pid for pid, _ in batch]
        found = {p.id: p for p in session.scalars(select(Prediction).where(Prediction.id.in_(ids), *unlabeled))}
        out += [(found[pid], active) for pid, active in batch if pid in found]
        if len(batch) < step:
            break
        after = QueuePosition(UNFLAGGED, _or_one(batch[-1][1]), batch[-1][0])
    return out[: limit + 1]


def _uncertain(session: Session, tenant_id: int, task_id: int, limit: int, after: QueuePosition | None) -> ReviewPage:
    unlabeled = (
        Prediction.tenant_id == tenant_id,
        Prediction.task_id == task_id,
        Prediction.feedback_count == 0,
        Prediction.effective_label.is_(None),
        Prediction.label_discarded.is_(False),
    )
    rows = _ranked(session, tenant_id, task_id, limit, after, unlabeled)
    if rows or after is not None:
        next_cursor = _next(rows, limit, lambda row: QueuePosition(UNFLAGGED, _or_one(row[1]), row[0].id))
        entries = [
            ReviewEntry(
                p.id,
                p.client_id,
                p.text,
                p.label,
                [],
                None,
                p.label,
                None,
                f"ActiveLab: labeling it would teach the model most (score {active:.3f})",
            )
            for p, active in rows[:limit]
        ]
        return ReviewPage(entries, next_cursor)
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
    entries = [
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
    return ReviewPage(entries, None)


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
