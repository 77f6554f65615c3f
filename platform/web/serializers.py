"""ORM rows to response schemas. Rows never leave the request's session: views serialize before they return."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.domain.partitions import feedback_of
from flywheel.domain.schemas import FeedbackOut, KeyOut, PredictionOut, TaskOut, TenantOut
from flywheel.models.records import ApiKey, Feedback, Prediction, Task, Tenant


def task_out(task: Task) -> TaskOut:
    return TaskOut(
        name=task.name,
        labels=list(task.labels),
        description=task.description,
        label_descriptions=dict(task.label_descriptions or {}),
        base_model=task.base_model,
        created_at=task.created_at,
    )


def tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        slug=tenant.slug,
        name=tenant.name,
        webhook_url=tenant.webhook_url,
        created_at=tenant.created_at,
        share_labels=tenant.share_labels,
        retention_days=tenant.retention_days,
        status=tenant.status,  # type: ignore[arg-type]
    )


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        tenant=key.tenant.slug if key.tenant else None,
        prefix=key.prefix,
        scopes=sorted(key.scope_set),
        name=key.name,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


def feedback_out(row: Feedback) -> FeedbackOut:
    return FeedbackOut(
        id=row.client_id,
        label=row.label,
        source=row.source,
        source_id=row.source_id,
        decision=row.decision,
        note=row.note,
        created_at=row.created_at,
    )


def predictions_out(session: Session, rows: Sequence[Prediction]) -> list[PredictionOut]:
    """Serialize predictions with their feedback, loaded in one query for the whole page."""
    by_prediction: dict[int, list[FeedbackOut]] = defaultdict(list)
    with_feedback = [(p.id, p.created_at) for p in rows if p.feedback_count]
    if with_feedback:
        for fb in session.scalars(
            select(Feedback).where(feedback_of(with_feedback)).order_by(Feedback.created_at, Feedback.id)
        ):
            by_prediction[fb.prediction_id].append(feedback_out(fb))
    return [
        PredictionOut(
            id=p.client_id,
            task=p.task.name,
            text=p.text,
            label=p.label,
            confidence=p.confidence,
            probabilities=p.probabilities,
            model_version=p.model_version,
            in_sample=p.in_sample,
            created_at=p.created_at,
            metadata=p.metadata_,
            feedback=by_prediction.get(p.id, []),
            effective_label=p.effective_label,
            label_discarded=p.label_discarded,
        )
        for p in rows
    ]
