"""Monitoring: SLA agreements and their changes, evaluations, drift reports, alerts, webhook deliveries.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-27 03:03:53.027042
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import flywheel.core.db

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = ("monitoring",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "drift_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("share", sa.Float(), nullable=True),
        sa.Column("reference_kind", sa.String(length=32), nullable=False),
        sa.Column("window_start", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("window_end", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("n_reference", sa.Integer(), nullable=False),
        sa.Column("n_current", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON().with_variant(sa.JSON(none_as_null=True), "sqlite"), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_drift_reports_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_drift_reports_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_reports")),
    )
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_drift_reports_tenant_task_created", ["tenant_id", "task_id", "created_at"], unique=False
        )

    op.create_table(
        "slas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=220), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("window_days", sa.Integer(), nullable=False),
        sa.Column("min_labeled", sa.Integer(), nullable=False),
        sa.Column("warning_margin", sa.Float(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.String(length=32), nullable=True),
        sa.Column("last_drift_status", sa.String(length=16), nullable=True),
        sa.Column("created_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_slas_task_id_tasks"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_slas_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slas")),
        sa.UniqueConstraint("tenant_id", "task_id", name=op.f("uq_slas_tenant_id_task_id")),
    )
    with op.batch_alter_table("slas", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_slas_task_id"), ["task_id"], unique=False)

    op.create_table(
        "sla_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sla_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("before", sa.JSON().with_variant(sa.JSON(none_as_null=True), "sqlite"), nullable=True),
        sa.Column("after", sa.JSON().with_variant(sa.JSON(none_as_null=True), "sqlite"), nullable=False),
        sa.Column("changed_by", sa.String(length=200), nullable=True),
        sa.Column("changed_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sla_id"], ["slas.id"], name=op.f("fk_sla_changes_sla_id_slas"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_changes")),
    )
    with op.batch_alter_table("sla_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sla_changes_sla_id"), ["sla_id"], unique=False)

    op.create_table(
        "sla_evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sla_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("sla_version", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=220), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("window_days", sa.Integer(), nullable=False),
        sa.Column("window_start", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("window_end", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("ci_low", sa.Float(), nullable=True),
        sa.Column("ci_high", sa.Float(), nullable=True),
        sa.Column("n_labeled", sa.Integer(), nullable=False),
        sa.Column("n_predictions", sa.Integer(), nullable=False),
        sa.Column("coverage", sa.Float(), nullable=True),
        sa.Column("estimated_value", sa.Float(), nullable=True),
        sa.Column("estimated_accuracy", sa.Float(), nullable=True),
        sa.Column("calibration_error", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("drift_status", sa.String(length=16), nullable=False),
        sa.Column("drift_report_id", sa.Integer(), nullable=True),
        sa.Column("evaluated_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["drift_report_id"],
            ["drift_reports.id"],
            name=op.f("fk_sla_evaluations_drift_report_id_drift_reports"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["sla_id"], ["slas.id"], name=op.f("fk_sla_evaluations_sla_id_slas"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_sla_evaluations_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_sla_evaluations_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_evaluations")),
    )
    with op.batch_alter_table("sla_evaluations", schema=None) as batch_op:
        batch_op.create_index("ix_sla_evaluations_sla_evaluated", ["sla_id", "evaluated_at"], unique=False)

    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("sla_id", sa.Integer(), nullable=True),
        sa.Column("evaluation_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("from_status", sa.String(length=32), nullable=True),
        sa.Column("to_status", sa.String(length=32), nullable=False),
        sa.Column("message", sa.String(length=500), nullable=False),
        sa.Column("payload", sa.JSON().with_variant(sa.JSON(none_as_null=True), "sqlite"), nullable=False),
        sa.Column("delivery_status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("delivered_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["sla_evaluations.id"],
            name=op.f("fk_alerts_evaluation_id_sla_evaluations"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(["sla_id"], ["slas.id"], name=op.f("fk_alerts_sla_id_slas"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_alerts_task_id_tasks"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_alerts_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_tenant_created", ["tenant_id", "created_at"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("created_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_webhook_deliveries_alert_id_alerts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_alert_id"), ["alert_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_alert_id"))

    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_tenant_created")

    op.drop_table("alerts")
    with op.batch_alter_table("sla_evaluations", schema=None) as batch_op:
        batch_op.drop_index("ix_sla_evaluations_sla_evaluated")

    op.drop_table("sla_evaluations")
    with op.batch_alter_table("sla_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sla_changes_sla_id"))

    op.drop_table("sla_changes")
    with op.batch_alter_table("slas", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_slas_task_id"))

    op.drop_table("slas")
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_drift_reports_tenant_task_created")

    op.drop_table("drift_reports")
