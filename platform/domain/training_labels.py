"""Which labels may train, and at what weight: the label-quality verdicts as the training set reads them.

The label-quality pass (``flywheel.feedback``) writes its verdicts as rows; retraining reads them through these
queries, so neither area imports the other. Only verdicts whose scored label is still the prediction's effective
label count: feedback that arrived after the pass changes the label, and the old verdict no longer applies.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, exists, select
from sqlalchemy.orm import Session

from flywheel.domain.partitions import feedback_joins_prediction
from flywheel.models.label_quality import LabelQualityResult
from flywheel.models.records import Feedback, Prediction


def reviewed() -> ColumnElement[bool]:
    """The prediction has a reviewer's decision: a person looked, which overrides the automatic verdicts."""
    return exists().where(feedback_joins_prediction(), Feedback.source == "reviewer")


def rule_only() -> ColumnElement[bool]:
    """The prediction's label comes from labeling rules alone (rule votes, no person's feedback): such a label may
    train a model but never measure one (the holdout, SLAs)."""
    return and_(
        exists().where(feedback_joins_prediction(), Feedback.source == "rule"),
        ~exists().where(feedback_joins_prediction(), Feedback.source != "rule"),
    )


def same_scope(tenant_id: int, task_id: int) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The scope again on the predictions side of a join with label-quality results: it is what lets PostgreSQL's
    partitioned table read only the scope's rows (its ``(tenant, task, created_at)`` index in each month) instead
    of every partition; harmless elsewhere."""
    return Prediction.tenant_id == tenant_id, Prediction.task_id == task_id


def excluded_prediction_ids(session: Session, tenant_id: int, task_id: int) -> set[int]:
    """Prediction ids training must leave out: label issues of the latest pass, labels only unreliable sources
    gave (unless a reviewer has since decided on the label: a "keep" counts at once), and discarded ones. Never a
    holdout prediction: the pass's holdout stage excludes nothing."""
    rows = session.execute(
        select(LabelQualityResult.prediction_id)
        .join(Prediction, Prediction.id == LabelQualityResult.prediction_id)
        .where(
            *same_scope(tenant_id, task_id),
            LabelQualityResult.tenant_id == tenant_id,
            LabelQualityResult.task_id == task_id,
            LabelQualityResult.kind == "labeled",
            LabelQualityResult.exclude_reason.is_not(None),
            LabelQualityResult.given_label == Prediction.effective_label,
            ~reviewed(),
        )
    )
    out = {pid for (pid,) in rows}
    scored_discarded = session.execute(
        select(LabelQualityResult.prediction_id)
        .join(Prediction, Prediction.id == LabelQualityResult.prediction_id)
        .where(
            *same_scope(tenant_id, task_id),
            LabelQualityResult.tenant_id == tenant_id,
            LabelQualityResult.task_id == task_id,
            Prediction.label_discarded.is_(True),
        )
    )
    out.update(pid for (pid,) in scored_discarded)
    return out


def training_weights(session: Session, tenant_id: int, task_id: int) -> dict[int, float]:
    """Prediction id -> training weight (the probability that its label is right) for the labels the latest pass
    scored below full weight; current verdicts only, never a reviewed label (a person decided: full weight)."""
    return _weights(
        session,
        tenant_id,
        task_id,
        LabelQualityResult.kind == "labeled",
        LabelQualityResult.holdout.is_(False),
        LabelQualityResult.train_weight < 1.0,
        LabelQualityResult.given_label == Prediction.effective_label,
        ~reviewed(),
    )


def _weights(session: Session, tenant_id: int, task_id: int, *where: ColumnElement[bool]) -> dict[int, float]:
    """Prediction id -> ``train_weight`` of the (tenant, task)'s latest results that meet ``where``."""
    rows = session.execute(
        select(LabelQualityResult.prediction_id, LabelQualityResult.train_weight)
        .join(Prediction, Prediction.id == LabelQualityResult.prediction_id)
        .where(
            *same_scope(tenant_id, task_id),
            LabelQualityResult.tenant_id == tenant_id,
            LabelQualityResult.task_id == task_id,
            *where,
        )
    )
    return {pid: float(w) for pid, w in rows if w is not None}


def flagged_weight() -> ColumnElement[bool]:
    """A label the latest pass flagged, still current and not yet reviewed: until a person decides it, it counts at
    its label weight (the probability that it is right) in the clean figures (the gate's, the SLA's)."""
    return and_(
        LabelQualityResult.kind == "labeled",
        LabelQualityResult.is_issue.is_(True),
        LabelQualityResult.train_weight.is_not(None),
        LabelQualityResult.given_label == Prediction.effective_label,
        ~reviewed(),
    )


def holdout_weights(session: Session, tenant_id: int, task_id: int) -> dict[int, float]:
    """Prediction id -> weight of the holdout labels the latest pass flagged (current, unreviewed): what the gate
    counts each at. Every other holdout label (unflagged, reviewed, or scored before its label changed) counts 1."""
    return _weights(session, tenant_id, task_id, LabelQualityResult.holdout.is_(True), flagged_weight())
