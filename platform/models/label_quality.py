"""Label-quality tables: the embedding cache, label-quality runs, per-prediction results, source reliability.

Results hold one row per scored prediction: the latest pass replaces the previous one for its (tenant, task) in
one transaction, and ``run_id`` says which pass produced it. The runs themselves are kept as history.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from flywheel.core.db import Base, UTCDateTime, utcnow
from flywheel.models.records import JSONType

LABEL_RUN_STATUSES = ("running", "succeeded", "failed")
RESULT_KINDS = ("labeled", "unlabeled")


class EmbeddingCache(Base):
    """One frozen-encoder embedding per distinct text and encoder: ``vector`` is ``dim`` little-endian float32."""

    __tablename__ = "embedding_cache"
    __table_args__ = (UniqueConstraint("encoder_id", "text_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    encoder_id: Mapped[str] = mapped_column(String(100))
    text_hash: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LabelQualityRun(Base):
    """One label-quality pass over a (tenant, task): its status row, progress and summary."""

    __tablename__ = "label_quality_runs"
    __table_args__ = (Index("ix_label_quality_runs_tenant_task_id", "tenant_id", "task_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="running")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(500), default="")
    trigger: Mapped[str] = mapped_column(String(32), default="cli")
    n_labeled: Mapped[int] = mapped_column(Integer, default=0)
    n_issues: Mapped[int] = mapped_column(Integer, default=0)
    n_unlabeled: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LabelQualityResult(Base):
    """The latest verdict on one prediction.

    ``kind`` "labeled": ``given_label`` (the effective label scored), ``quality`` (cleanlab label quality, lower =
    more likely wrong), ``is_issue``, ``suggested_label``, ``oos_source`` (which out-of-sample source scored it),
    ``train_weight`` (the probability that the label is right, its weight in training), and the consensus when
    several sources labeled it. ``holdout``: a label of the evaluation holdout, scored apart from the others by
    models that never trained on it; its ``train_weight`` is the weight it counts at in the gate's and the SLA's
    figures until a reviewer decides it (it never trains). ``kind`` "unlabeled": ``active_score`` (ActiveLab, lower =
    more worth a person's label).
    """

    __tablename__ = "label_quality_results"
    __table_args__ = (
        UniqueConstraint("prediction_id"),
        Index("ix_label_quality_results_scope", "tenant_id", "task_id", "kind", "quality"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("label_quality_runs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="labeled")
    given_label: Mapped[str | None] = mapped_column(String(200))
    quality: Mapped[float | None] = mapped_column(Float)
    is_issue: Mapped[bool] = mapped_column(Boolean, default=False)
    suggested_label: Mapped[str | None] = mapped_column(String(200))
    oos_source: Mapped[str | None] = mapped_column(String(240))
    consensus_label: Mapped[str | None] = mapped_column(String(200))
    consensus_quality: Mapped[float | None] = mapped_column(Float)
    consensus_method: Mapped[str | None] = mapped_column(String(32))
    consensus_votes: Mapped[int | None] = mapped_column(Integer)  # feedback rows the consensus saw
    active_score: Mapped[float | None] = mapped_column(Float)
    # Why training leaves it out: "label_issue", or "excluded_source" (only unreliable sources labeled it).
    exclude_reason: Mapped[str | None] = mapped_column(String(32))
    # The weight training gives the label when it keeps it: the probability that it is right (label_weights).
    train_weight: Mapped[float | None] = mapped_column(Float)
    # A holdout label, scored by the pass's holdout stage (never trains; weighs the gate's and the SLA's figures).
    holdout: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class LabelSourceStat(Base):
    """Reliability of one feedback source (``source``, ``source_id``) in one pass: its label-issue rate."""

    __tablename__ = "label_source_stats"
    __table_args__ = (Index("ix_label_source_stats_scope", "tenant_id", "task_id", "run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("label_quality_runs.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[str] = mapped_column(String(200), default="")
    n_labels: Mapped[int] = mapped_column(Integer, default=0)
    n_issues: Mapped[int] = mapped_column(Integer, default=0)
    issue_rate: Mapped[float] = mapped_column(Float, default=0.0)
    annotator_quality: Mapped[float | None] = mapped_column(Float)
    excluded: Mapped[bool] = mapped_column(Boolean, default=False)


class LabelingRule(Base):
    """A labeling rule (weak supervision): keywords or a regular expression that votes for ``label``.

    ``tenant_id`` null: the task's shared rules, applied to every tenant's predictions; else rules of that tenant
    alone. ``tenant_key`` is 0 or the tenant's id, so one unique key covers both scopes. A rule's votes are
    feedback rows with ``source = "rule"`` and ``source_id = name``.
    """

    __tablename__ = "labeling_rules"
    __table_args__ = (UniqueConstraint("task_id", "tenant_key", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    tenant_key: Mapped[int] = mapped_column(Integer, default=0)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # keywords | regex
    keywords: Mapped[list[str] | None] = mapped_column(JSONType)
    pattern: Mapped[str | None] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
