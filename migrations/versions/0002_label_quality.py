"""Label quality: the embedding cache, label-quality runs, per-prediction results, source reliability.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 03:08:36.949306
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import flywheel.core.db

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = ("feedback",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "embedding_cache",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("encoder_id", sa.String(length=100), nullable=False),
        sa.Column("text_hash", sa.String(length=64), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embedding_cache")),
        sa.UniqueConstraint("encoder_id", "text_hash", name=op.f("uq_embedding_cache_encoder_id_text_hash")),
    )
    op.create_table(
        "label_quality_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.String(length=500), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("n_labeled", sa.Integer(), nullable=False),
        sa.Column("n_issues", sa.Integer(), nullable=False),
        sa.Column("n_unlabeled", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON().with_variant(sa.JSON(none_as_null=True), "sqlite"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_label_quality_runs_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_label_quality_runs_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_quality_runs")),
    )
    with op.batch_alter_table("label_quality_runs", schema=None) as batch_op:
        batch_op.create_index("ix_label_quality_runs_tenant_task_id", ["tenant_id", "task_id", "id"], unique=False)

    op.create_table(
        "label_quality_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("given_label", sa.String(length=200), nullable=True),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("is_issue", sa.Boolean(), nullable=False),
        sa.Column("suggested_label", sa.String(length=200), nullable=True),
        sa.Column("oos_source", sa.String(length=32), nullable=True),
        sa.Column("consensus_label", sa.String(length=200), nullable=True),
        sa.Column("consensus_quality", sa.Float(), nullable=True),
        sa.Column("consensus_method", sa.String(length=32), nullable=True),
        sa.Column("consensus_votes", sa.Integer(), nullable=True),
        sa.Column("active_score", sa.Float(), nullable=True),
        sa.Column("exclude_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_label_quality_results_prediction_id_predictions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["label_quality_runs.id"],
            name=op.f("fk_label_quality_results_run_id_label_quality_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_label_quality_results_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_label_quality_results_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_quality_results")),
        sa.UniqueConstraint("prediction_id", name=op.f("uq_label_quality_results_prediction_id")),
    )
    with op.batch_alter_table("label_quality_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_label_quality_results_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            "ix_label_quality_results_scope", ["tenant_id", "task_id", "kind", "quality"], unique=False
        )

    op.create_table(
        "label_source_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_id", sa.String(length=200), nullable=False),
        sa.Column("n_labels", sa.Integer(), nullable=False),
        sa.Column("n_issues", sa.Integer(), nullable=False),
        sa.Column("issue_rate", sa.Float(), nullable=False),
        sa.Column("annotator_quality", sa.Float(), nullable=True),
        sa.Column("excluded", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["label_quality_runs.id"],
            name=op.f("fk_label_source_stats_run_id_label_quality_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_label_source_stats_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_label_source_stats_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_source_stats")),
    )
    with op.batch_alter_table("label_source_stats", schema=None) as batch_op:
        batch_op.create_index("ix_label_source_stats_scope", ["tenant_id", "task_id", "run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("label_source_stats", schema=None) as batch_op:
        batch_op.drop_index("ix_label_source_stats_scope")

    op.drop_table("label_source_stats")
    with op.batch_alter_table("label_quality_results", schema=None) as batch_op:
        batch_op.drop_index("ix_label_quality_results_scope")
        batch_op.drop_index(batch_op.f("ix_label_quality_results_run_id"))

    op.drop_table("label_quality_results")
    with op.batch_alter_table("label_quality_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_label_quality_runs_tenant_task_id")

    op.drop_table("label_quality_runs")
    op.drop_table("embedding_cache")
