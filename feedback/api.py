"""Label quality and review endpoints (API.md, "Label quality and review"). Every query is tenant-scoped:
another tenant's prediction answers 404, exactly as one that does not exist."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from flask import Blueprint, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select

from flywheel.core.errors import NotFound
from flywheel.domain import partitions
from flywheel.domain.auth import Principal
from flywheel.domain.schemas import (
    NO_NUL_SCHEMA,
    REVIEW_CURSOR_PATTERN,
    TENANT_PARAMETER,
    FeedbackOut,
    LabelName,
    Name,
    NoNul,
    QueryInt,
    RulesIn,
    ShortText,
    Strict,
)
from flywheel.models.records import Prediction, Task
from flywheel.web.context import get_session, get_settings, get_tasks
from flywheel.web.serializers import feedback_out
from flywheel.web.spec import json_response, operation

bp = Blueprint("review", __name__, url_prefix="/v1")


class ReviewQuery(Strict):
    task: Name
    kind: Literal["label_issue", "uncertain"] = "label_issue"
    limit: QueryInt = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(
        default=None,
        pattern=REVIEW_CURSOR_PATTERN,
        description="the previous page's `next_cursor` (treat it as opaque): pages reach every item once",
    )
    tenant: Name | None = Field(default=None, description=TENANT_PARAMETER)


class ReviewItemOut(BaseModel):
    """One prediction worth a person's time."""

    prediction_id: str
    text: str
    label: str
    feedback: list[FeedbackOut]
    effective_label: str | None
    suggested_label: str | None
    quality: float | None
    reason: str


class ReviewQueueOut(BaseModel):
    """The review queue, most worth a person's time first."""

    task: str
    kind: str
    items: list[ReviewItemOut]
    next_cursor: str | None = Field(description="the next page's cursor; null on the last page (and before any pass)")


class ReviewIn(Strict):
    """``label`` is required for ``relabel`` (one of the task's labels: 422 otherwise) and absent otherwise."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {"properties": {"decision": {"const": "relabel"}}},
            "then": {"required": ["label"], "properties": {"label": {"type": "string"}}},
            "else": {"properties": {"label": {"type": "null"}}},
        },
    )

    decision: Literal["keep", "relabel", "discard"]
    label: LabelName | None = None
    note: Annotated[str, StringConstraints(max_length=5000), NoNul, NO_NUL_SCHEMA] | None = None
    reviewer: ShortText | None = Field(default=None, description="who decided (default: the API key)")


class ReviewOut(BaseModel):
    """The decision as stored (feedback with source ``reviewer``) and the prediction's new effective label."""

    prediction_id: str
    feedback: FeedbackOut
    effective_label: str | None
    label_discarded: bool


class LabelQualityQuery(Strict):
    task: Name
    tenant: Name | None = Field(default=None, description=TENANT_PARAMETER)


class SourceOut(BaseModel):
    source: str
    source_id: str | None
    n_labels: int
    n_issues: int
    issue_rate: float
    annotator_quality: float | None
    excluded: bool


class RunOut(BaseModel):
    id: int
    status: str
    progress: float
    message: str
    trigger: str
    n_labeled: int
    n_issues: int
    n_unlabeled: int
    summary: dict[str, Any]
    error: str | None
    started_at: datetime
    finished_at: datetime | None


class LabelQualityOut(BaseModel):
    """Issue rates per feedback source and the latest pass's summary."""

    tenant: str
    task: str
    exclude_issue_rate: float
    min_labels: int
    latest_run: RunOut | None
    latest_finished_run: RunOut | None
    sources: list[SourceOut]


def _task(session: Any, name: str) -> Task:
    task = session.scalar(select(Task).where(Task.name == name))
    if task is None:
        raise NotFound(f"task '{name}' does not exist")
    return task


@operation(
    bp,
    "GET",
    "/review",
    summary="The review queue: likely label errors, or the unlabeled predictions worth labeling",
    scope="read",
    query=ReviewQuery,
    responses={200: ReviewQueueOut},
)
def get_review(*, principal: Principal, query: ReviewQuery) -> Response:
    """``label_issue``: lowest label quality first; ``uncertain``: most informative first (ActiveLab)."""
    from flywheel.feedback.review import review_page

    session = get_session()
    tenant = principal.tenant_for(session, query.tenant)
    task = _task(session, query.task)
    page = review_page(
        session, tenant_id=tenant.id, task_id=task.id, kind=query.kind, limit=query.limit, cursor=query.cursor
    )
    items = [
        ReviewItemOut(
            prediction_id=e.client_id,
            text=e.text,
            label=e.label,
            feedback=[FeedbackOut(**f) for f in e.feedback],
            effective_label=e.effective_label,
            suggested_label=e.suggested_label,
            quality=e.quality,
            reason=e.reason,
        )
        for e in page.entries
    ]
    return json_response(ReviewQueueOut(task=task.name, kind=query.kind, items=items, next_cursor=page.next_cursor))


class TenantOnlyQuery(Strict):
    tenant: Name | None = Field(default=None, description=TENANT_PARAMETER)


@operation(
    bp,
    "POST",
    "/review/<prediction_id>",
    summary="Record a reviewer's decision (keep, relabel, discard) as feedback",
    scope="ingest",
    body=ReviewIn,
    query=TenantOnlyQuery,
    responses={201: ReviewOut},
)
def post_review(prediction_id: str, *, principal: Principal, body: ReviewIn, query: TenantOnlyQuery) -> Response:
    """Stored as feedback with ``source: reviewer`` (an audit trail, never an in-place edit); a reviewer decision
    beats every other source in the effective label."""
    from flywheel.feedback.review import record_decision

    session = get_session()
    tenant = principal.tenant_for(session, query.tenant)
    prediction = session.scalar(select(Prediction).where(partitions.by_client_ids(session, tenant.id, [prediction_id])))
    if prediction is None:
        raise NotFound(f"prediction '{prediction_id}' does not exist")
    row = record_decision(
        session,
        prediction,
        decision=body.decision,
        label=body.label,
        note=body.note,
        reviewer=body.reviewer or f"key:{principal.key_id}",
    )
    session.refresh(prediction)
    out = ReviewOut(
        prediction_id=prediction.client_id,
        feedback=feedback_out(row),
        effective_label=prediction.effective_label,
        label_discarded=prediction.label_discarded,
    )
    session.commit()
    return json_response(out, 201)


@operation(
    bp,
    "GET",
    "/label-quality",
    summary="Label-issue rates per feedback source and the latest label-quality pass",
    scope="read",
    query=LabelQualityQuery,
    responses={200: LabelQualityOut},
)
def get_label_quality(*, principal: Principal, query: LabelQualityQuery) -> Response:
    """A source above ``exclude_issue_rate`` (after ``min_labels`` labels) is excluded from training."""
    from flywheel.feedback.results import latest_run, run_dict, source_reliability

    session = get_session()
    settings = get_settings()
    tenant = principal.tenant_for(session, query.tenant)
    task = _task(session, query.task)
    run = latest_run(session, tenant.id, task.id)
    finished = latest_run(session, tenant.id, task.id, finished=True)
    return json_response(
        LabelQualityOut(
            tenant=tenant.slug,
            task=task.name,
            exclude_issue_rate=settings.source_exclude_issue_rate,
            min_labels=settings.source_min_labels,
            latest_run=RunOut(**run_dict(run)) if run else None,
            latest_finished_run=RunOut(**run_dict(finished)) if finished else None,
            sources=[SourceOut(**s) for s in source_reliability(session, tenant.id, task.id)],
        )
    )


# --- labeling rules -----------------------------------------------------------------------------------------------


class RulesQuery(Strict):
    tenant: Name | None = Field(
        default=None,
        description="admin: a tenant's own rules (default: the task's shared rules); a tenant key: its own tenant",
    )


class RuleOut(BaseModel):
    """A labeling rule as given, with how it does on the logged predictions of the scope."""

    name: str
    label: str
    kind: Literal["keywords", "regex"]
    keywords: list[str] | None = None
    pattern: str | None = None
    tenant: str | None = Field(description="null: a shared rule of the task")
    votes: int
    coverage: float = Field(description="the share of the scope's logged predictions it votes on")
    accuracy: float | None = Field(description="agreement with human labels where they overlap; null when none do")
    conflicts: int = Field(description="its votes that disagree with another rule's vote on the same prediction")


class RulesOut(BaseModel):
    """The rules that apply to the scope: the task's shared rules, then the tenant's own."""

    task: str
    tenant: str | None
    rules: list[RuleOut]


def _rules_out(session: Any, task: Task, tenant: Any) -> RulesOut:
    from flywheel.domain.labeling_rules import rule_stats, rules_in_scope

    tenant_id = tenant.id if tenant is not None else None
    stats = rule_stats(session, task.id, tenant_id)
    out = []
    for rule in rules_in_scope(session, task.id, tenant_id):
        s = stats.get(rule.name)
        out.append(
            RuleOut(
                name=rule.name,
                label=rule.label,
                kind=rule.kind,  # type: ignore[arg-type]
                keywords=rule.keywords,
                pattern=rule.pattern,
                tenant=tenant.slug if rule.tenant_id is not None else None,
                votes=s.votes if s else 0,
                coverage=s.coverage if s else 0.0,
                accuracy=s.accuracy if s else None,
                conflicts=s.conflicts if s else 0,
            )
        )
    return RulesOut(task=task.name, tenant=tenant.slug if tenant is not None else None, rules=out)


def _rule_tenant(session: Any, principal: Principal, slug: str | None) -> Any:
    """The scope of a rules request: None (the task's shared rules) for an admin naming no tenant, else a tenant."""
    if principal.is_admin and slug is None:
        return None
    return principal.tenant_for(session, slug)


@operation(
    bp,
    "PUT",
    "/tasks/<name>/rules",
    summary="Replace the labeling rules of a task (admin: shared or a tenant's; a tenant key: its own)",
    scope="ingest",
    body=RulesIn,
    query=RulesQuery,
    responses={200: RulesOut},
)
def put_rules(name: str, *, principal: Principal, body: RulesIn, query: RulesQuery) -> Response:
    """The rules vote on new predictions at ingest and on older ones in the nightly back-fill; each vote is
    feedback with ``source: rule``, ranked below every human source."""
    from flywheel.domain.labeling_rules import replace_rules

    session = get_session()
    task = _task(session, name)
    tenant = _rule_tenant(session, principal, query.tenant)
    replace_rules(session, task, tenant.id if tenant is not None else None, body.rules)
    out = _rules_out(session, task, tenant)
    session.commit()
    get_tasks().forget_rules()  # this process's ingestion votes with the new rules at once
    return json_response(out)


@operation(
    bp,
    "GET",
    "/tasks/<name>/rules",
    summary="The labeling rules of a task with their coverage, accuracy and conflicts",
    scope="read",
    query=RulesQuery,
    responses={200: RulesOut},
)
def get_rules(name: str, *, principal: Principal, query: RulesQuery) -> Response:
    session = get_session()
    task = _task(session, name)
    return json_response(_rules_out(session, task, _rule_tenant(session, principal, query.tenant)))
