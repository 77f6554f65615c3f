"""Retraining tables: model versions, the champion slot of each (task, tenant), training runs, job locks.

The champion of a (task, tenant) scope is recorded twice on purpose: ``ModelVersion.status`` (what the API
shows) and one ``ChampionSlot`` row per scope (unique, so there is never more than one champion, and cheap for
serving to poll). Both change in the same transaction, so a crash never leaves a half-promoted model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from flywheel.core.db import Base, UTCDateTime, utcnow
from flywheel.models.records import JSONType, Task, Tenant

MODEL_STATUSES = ("candidate", "champion", "retired")
RUNGS = ("zero_shot", "few_shot", "fine_tuned")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "rejected")
RUN_FINISHED = ("succeeded", "failed", "rejected")


class ModelVersion(Base):
    """One trained (or zero-shot) model of a task; ``tenant_id`` null means the task's shared model."""

    __tablename__ = "model_versions"
    __table_args__ = (Index("ix_model_versions_task_tenant_status", "task_id", "tenant_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(200), unique=True)
    rung: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    artifact_path: Mapped[str | None] = mapped_column(String(2000))
    base_model: Mapped[str | None] = mapped_column(String(1000))
    training_run_id: Mapped[int | None] = mapped_column(Integer)
    # The champion this one replaced when it was promoted: rollback restores it.
    replaced_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Data rights: how many of the rows that trained it were erased since (or belong to a tenant that stopped
    # sharing), when it first became tainted, and when the "tainted too long" alert went out.
    tainted_rows: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tainted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    taint_alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    task: Mapped[Task] = relationship(lazy="joined")
    tenant: Mapped[Tenant | None] = relationship(lazy="joined")

    @property
    def tainted(self) -> bool:
        return self.tainted_at is not None


class ModelTrainingRow(Base):
    """One prediction that trained one model version: the lineage that erasure follows, and that tells the
    label-quality pass which of a served model's logged probabilities are out-of-sample (those of items it holds
    no row of).

    A row per (model, prediction) rather than the id list in the artifact's ``lineage.json``: erasing a record
    must find every model it trained with one indexed query (``prediction_id``), without reading artifacts that
    may sit on a remote store. Erasure deletes the rows of the records it removes and counts them on the model
    (``tainted_rows``), so the table only ever holds ids of records that still exist. Holdout rows evaluate but
    never train, so they are not recorded.
    """

    __tablename__ = "model_training_rows"
    __table_args__ = (Index("ix_model_training_rows_prediction_id", "prediction_id"),)

    model_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True)


class ChampionSlot(Base):
    """The serving model of one scope: (task, tenant) where ``tenant_key`` is the tenant id, or 0 for shared.

    ``updated_at`` changes at every promotion or rollback; web workers compare it per request to reload.
    """

    __tablename__ = "champion_slots"
    __table_args__ = (UniqueConstraint("task_id", "tenant_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    tenant_key: Mapped[int] = mapped_column(Integer, default=0)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TrainingRun(Base):
    """One training attempt, from ``queued`` to ``succeeded`` / ``failed`` / ``rejected`` (by the gate)."""

    __tablename__ = "training_runs"
    __table_args__ = (Index("ix_training_runs_status_id", "status", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    trigger: Mapped[str] = mapped_column(String(32), default="api")
    rung: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(String(500))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    decision: Mapped[str | None] = mapped_column(String(16))  # promoted | rejected | skipped
    reasons: Mapped[list[str]] = mapped_column(JSONType, default=list)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    # Scale-out: how many times a process claimed the run, the queue it was last sent to (cpu | gpu, null in
    # process), and when its last message was sent (the scheduler re-sends a nudge that nobody picked up).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queue: Mapped[str | None] = mapped_column(String(16))
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    task: Mapped[Task] = relationship(lazy="joined")
    tenant: Mapped[Tenant | None] = relationship(lazy="joined")


class JobLock(Base):
    """A lease held by ``owner`` until ``expires_at``; a holder renews it, a dead one's lease runs out."""

    __tablename__ = "job_locks"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobRun(Base):
    """One execution of a scheduled job for one fire time; the unique key forbids a second execution."""

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job_id", "fire_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(100))
    fire_key: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | succeeded | failed
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WorkerProcess(Base):
    """A running ``flywheel worker``: the queues it consumes and its device, kept fresh by a heartbeat.

    The scheduler reads this to route work: a fine-tune goes to the ``gpu`` queue only while a live worker
    consumes it, so a deployment without one never queues a run that would wait forever.
    """

    __tablename__ = "worker_processes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid
    queues: Mapped[str] = mapped_column(String(100))  # comma-separated
    device: Mapped[str] = mapped_column(String(200))  # "cpu" or "cuda: <card name>"
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
