"""Monitoring tables: SLA agreements (with their change history), evaluations, drift reports, alerts, deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from flywheel.core.db import Base, UTCDateTime, utcnow
from flywheel.models.records import JSONType, Task, Tenant


class Sla(Base):
    """The agreed "good enough" of one tenant on one task. ``last_status`` / ``last_drift_status`` are the states
    the alerting compares against, so an alert fires once per transition."""

    __tablename__ = "slas"
    __table_args__ = (UniqueConstraint("tenant_id", "task_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    metric: Mapped[str] = mapped_column(String(220))
    threshold: Mapped[float] = mapped_column(Float)
    window_days: Mapped[int] = mapped_column(Integer)
    min_labeled: Mapped[int] = mapped_column(Integer)
    warning_margin: Mapped[float] = mapped_column(Float)
    # Which value the verdict and the alerts read: "raw" (every label as given) or "clean" (``value_clean``).
    agreement: Mapped[str] = mapped_column(String(8), default="raw", server_default="raw")
    version: Mapped[int] = mapped_column(Integer, default=1)
    last_status: Mapped[str | None] = mapped_column(String(32))
    last_drift_status: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tenant: Mapped[Tenant] = relationship(lazy="joined")
    task: Mapped[Task] = relationship(lazy="joined")


class SlaChange(Base):
    """One change of an SLA's terms: what it was (null on creation), what it became, who changed it."""

    __tablename__ = "sla_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sla_id: Mapped[int] = mapped_column(ForeignKey("slas.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    after: Mapped[dict[str, Any]] = mapped_column(JSONType)
    changed_by: Mapped[str | None] = mapped_column(String(200))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DriftReport(Base):
    """One Evidently drift run: the summary as columns and JSON, the full snapshot as gzip-compressed JSON."""

    __tablename__ = "drift_reports"
    __table_args__ = (Index("ix_drift_reports_tenant_task_created", "tenant_id", "task_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # none | detected | unknown
    share: Mapped[float | None] = mapped_column(Float)
    reference_kind: Mapped[str] = mapped_column(String(32))  # training_data | window
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    n_reference: Mapped[int] = mapped_column(Integer, default=0)
    n_current: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    snapshot: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SlaEvaluation(Base):
    """One evaluation of an SLA: the measured value with its interval, the label-free estimate, calibration and
    drift. The terms in force (metric, threshold) are copied so the history stays true after the SLA changes."""

    __tablename__ = "sla_evaluations"
    __table_args__ = (Index("ix_sla_evaluations_sla_evaluated", "sla_id", "evaluated_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sla_id: Mapped[int] = mapped_column(ForeignKey("slas.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    sla_version: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(220))
    threshold: Mapped[float] = mapped_column(Float)
    window_days: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    value: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    # The value on reviewed labels at full weight and flagged, unreviewed ones at their label weight.
    value_clean: Mapped[float | None] = mapped_column(Float)
    ci_low_clean: Mapped[float | None] = mapped_column(Float)
    ci_high_clean: Mapped[float | None] = mapped_column(Float)
    agreement: Mapped[str] = mapped_column(String(8), default="raw", server_default="raw")  # the one status read
    n_labeled: Mapped[int] = mapped_column(Integer)
    n_predictions: Mapped[int] = mapped_column(Integer)
    coverage: Mapped[float | None] = mapped_column(Float)
    estimated_value: Mapped[float | None] = mapped_column(Float)
    estimated_accuracy: Mapped[float | None] = mapped_column(Float)
    calibration_error: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(32))
    drift_status: Mapped[str] = mapped_column(String(16), default="unknown")
    drift_report_id: Mapped[int | None] = mapped_column(ForeignKey("drift_reports.id", ondelete="SET NULL"))
    evaluated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Alert(Base):
    """A status transition worth telling the customer about; kept whether or not the webhook got through."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    sla_id: Mapped[int | None] = mapped_column(ForeignKey("slas.id", ondelete="SET NULL"))
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("sla_evaluations.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16))  # sla_status | drift | model_tainted
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(String(500))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    delivery_status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed|no_webhook
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One attempt to POST an alert to the tenant's webhook."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(2000))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    duration_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
