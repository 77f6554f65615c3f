"""core: data rights: tenant sharing, retention and deletion status; model taint; training-row lineage; erasures

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import flywheel.core.db

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
# model_versions (retrain) and predictions must exist before their columns and foreign keys are added.
depends_on: str | Sequence[str] | None = ("0004",)


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("share_labels", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("status", sa.String(length=16), server_default="active", nullable=False))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("tainted_rows", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("tainted_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("taint_alerted_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=True))
    op.create_table(
        "model_training_rows",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["model_versions.id"],
            name=op.f("fk_model_training_rows_model_id_model_versions"),
            ondelete="CASCADE",
        ),
        # No foreign key to a partitioned table's id on PostgreSQL (0008): erasure and retention delete these rows.
        *(
            []
            if op.get_bind().dialect.name == "postgresql"
            else [
                sa.ForeignKeyConstraint(
                    ["prediction_id"],
                    ["predictions.id"],
                    name=op.f("fk_model_training_rows_prediction_id_predictions"),
                    ondelete="CASCADE",
                )
            ]
        ),
        sa.PrimaryKeyConstraint("model_id", "prediction_id", name=op.f("pk_model_training_rows")),
    )
    op.create_index("ix_model_training_rows_prediction_id", "model_training_rows", ["prediction_id"], unique=False)
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("tenant_slug", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("id_hashes", sa.JSON(), nullable=False),
        sa.Column("created_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
    )
    op.create_index("ix_erasures_tenant_created", "erasures", ["tenant_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_erasures_tenant_created", table_name="erasures")
    op.drop_table("erasures")
    op.drop_index("ix_model_training_rows_prediction_id", table_name="model_training_rows")
    op.drop_table("model_training_rows")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("taint_alerted_at")
        batch.drop_column("tainted_at")
        batch.drop_column("tainted_rows")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("status")
        batch.drop_column("retention_days")
        batch.drop_column("share_labels")
