"""Core tables: tenants, API keys, tasks, predictions and feedback."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from flywheel.core.db import Base, UTCDateTime, utcnow

JSONType = JSON().with_variant(JSON(none_as_null=True), "sqlite")


class Tenant(Base):
    """A customer. ``slug`` is the name used in URLs and the CLI."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Data rights: whether the tenant's labels may train the shared models (its own variant always trains on them),
    # how many days its predictions are kept (null: forever), and ``deleting`` while a deletion job removes it.
    share_labels: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    retention_days: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")


TENANT_STATUSES = ("active", "deleting")


class ApiKey(Base):
    """An API key, stored as a SHA-256 hash of a 256-bit random secret; ``tenant_id`` is null for admin keys."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(100))  # comma-separated: ingest,read,admin
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    tenant: Mapped[Tenant | None] = relationship(lazy="joined")

    @property
    def scope_set(self) -> frozenset[str]:
        return split_scopes(self.scopes)


def split_scopes(scopes: str) -> frozenset[str]:
    """The stored comma-separated scopes as a set."""
    return frozenset(s for s in scopes.split(",") if s)


class Task(Base):
    """One classification problem with a fixed label set, shared by the tenants that use it."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    labels: Mapped[list[str]] = mapped_column(JSONType)
    label_descriptions: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    base_model: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Prediction(Base):
    """A logged prediction. ``client_id`` is the client's idempotency key, unique per tenant.

    ``effective_label`` is derived from the feedback (never typed in): the documented rule on ingest,
    then the label-quality pass. ``bucket`` (0-99, a stable hash of tenant and client id) decides the
    evaluation holdout in SQL.
    """

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "client_id"),
        Index("ix_predictions_tenant_task_created", "tenant_id", "task_id", "created_at"),
        # The labeled few among many: training-set assembly and label-quality passes read only these. Ingest never
        # touches it (a new prediction has no label yet).
        Index(
            "ix_predictions_labeled",
            "task_id",
            "tenant_id",
            postgresql_where=text("effective_label IS NOT NULL"),
            sqlite_where=text("effective_label IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, float] | None] = mapped_column(JSONType)
    model_version: Mapped[str | None] = mapped_column(String(200))
    #: The model that logged ``probabilities`` trained on this item: they are no out-of-sample signal for its label.
    in_sample: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    content_hash: Mapped[str] = mapped_column(String(64))
    bucket: Mapped[int] = mapped_column(SmallInteger)
    effective_label: Mapped[str | None] = mapped_column(String(200))
    label_discarded: Mapped[bool] = mapped_column(Boolean, default=False)
    feedback_count: Mapped[int] = mapped_column(Integer, default=0)

    task: Mapped[Task] = relationship(lazy="joined")


class Feedback(Base):
    """One label given for a prediction by one source. Kept forever, never overwritten.

    ``prediction_created_at`` is its prediction's ``created_at``, copied when the feedback is written (predictions
    never change it): on PostgreSQL the feedback table is partitioned by it, so a month's predictions and their
    feedback sit in partitions of the same month and are dropped together (``flywheel.domain.partitions``).
    """

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("tenant_id", "client_id"),
        # The few reviewer decisions among all feedback: "has a person reviewed it" (the review queue, training-set
        # assembly) reads these instead of every feedback row.
        Index(
            "ix_feedback_reviewed",
            "prediction_id",
            "prediction_created_at",
            postgresql_where=text("source = 'reviewer'"),
            sqlite_where=text("source = 'reviewer'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    prediction_created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    client_id: Mapped[str] = mapped_column(String(128))
    label: Mapped[str | None] = mapped_column(String(200))  # null for a reviewer's "discard"
    source: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[str | None] = mapped_column(String(200))
    decision: Mapped[str | None] = mapped_column(String(16))  # reviewer decisions: keep, relabel, discard
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    content_hash: Mapped[str] = mapped_column(String(64))
