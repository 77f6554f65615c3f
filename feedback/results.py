"""Reading the label-quality results: what training leaves out, the latest pass, source reliability.

Services take the session first and never commit. Only results whose scored label is still the prediction's
effective label count: feedback that arrived after the pass changes the label, and the old verdict no longer applies.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from flywheel.domain.training_labels import reviewed
from flywheel.models.label_quality import LabelQualityResult, LabelQualityRun, LabelSourceStat
from flywheel.models.records import Prediction, Task


def flagged_client_ids(session: Session, task: str, tenant_id: int | None = None) -> set[str]:
    """Client ids of the predictions flagged as label issues (current ones only) for a task, every tenant or one."""
    return _current_client_ids(session, task, tenant_id, LabelQualityResult.is_issue.is_(True))


def excluded_client_ids(session: Session, task: str, tenant_id: int | None = None) -> set[str]:
    """Client ids of the predictions the latest passes leave out of training (label issues strong enough to drop,
    labels only unreliable sources gave), current ones only, for a task, every tenant or one."""
    return _current_client_ids(
        session,
        task,
        tenant_id,
        LabelQualityResult.kind == "labeled",
        LabelQualityResult.exclude_reason.is_not(None),
        ~reviewed(),
    )


def _current_client_ids(
    session: Session, task: str, tenant_id: int | None, *conditions: ColumnElement[bool]
) -> set[str]:
    """Client ids whose current result (scored label still the effective one) meets ``conditions``."""
    stmt = (
        select(Prediction.client_id)
        .join(LabelQualityResult, LabelQualityResult.prediction_id == Prediction.id)
        .join(Task, Task.id == Prediction.task_id)
        .where(Task.name == task, LabelQualityResult.given_label == Prediction.effective_label, *conditions)
    )
    if tenant_id is not None:
        stmt = stmt.where(Prediction.tenant_id == tenant_id)
    return {cid for (cid,) in session.execute(stmt)}


def latest_run(session: Session, tenant_id: int, task_id: int, *, finished: bool = False) -> LabelQualityRun | None:
    stmt = select(LabelQualityRun).where(LabelQualityRun.tenant_id == tenant_id, LabelQualityRun.task_id == task_id)
    if finished:
        stmt = stmt.where(LabelQualityRun.status == "succeeded")
    return session.scalar(stmt.order_by(LabelQualityRun.id.desc()).limit(1))


def run_dict(run: LabelQualityRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "progress": run.progress,
        "message": run.message,
        "trigger": run.trigger,
        "n_labeled": run.n_labeled,
        "n_issues": run.n_issues,
        "n_unlabeled": run.n_unlabeled,
        "summary": run.summary,
        "error": run.error,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


def source_reliability(session: Session, tenant_id: int, task_id: int) -> list[dict[str, Any]]:
    """Issue rate per feedback source in the latest finished pass, worst first."""
    run = latest_run(session, tenant_id, task_id, finished=True)
    if run is None:
        return []
    rows = session.scalars(
        select(LabelSourceStat)
        .where(LabelSourceStat.run_id == run.id)
        .order_by(LabelSourceStat.issue_rate.desc(), LabelSourceStat.n_labels.desc(), LabelSourceStat.id)
    )
    return [
        {
            "source": s.source,
            "source_id": s.source_id or None,
            "n_labels": s.n_labels,
            "n_issues": s.n_issues,
            "issue_rate": s.issue_rate,
            "annotator_quality": s.annotator_quality,
            "excluded": s.excluded,
        }
        for s in rows
    ]
