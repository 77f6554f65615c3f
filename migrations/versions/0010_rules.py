"""Label quality: labeling rules (weak supervision), whose votes are feedback with source "rule".

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import flywheel.core.db

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "labeling_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("tenant_key", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("keywords", sa.JSON().with_variant(sa.JSON(none_as_null=True), "sqlite"), nullable=True),
        sa.Column("pattern", sa.Text(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("created_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_labeling_rules_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_labeling_rules_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labeling_rules")),
        sa.UniqueConstraint("task_id", "tenant_key", "name", name=op.f("uq_labeling_rules_task_id_tenant_key_name")),
    )
    with op.batch_alter_table("labeling_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_labeling_rules_task_id"), ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("labeling_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labeling_rules_task_id"))
    op.drop_table("labeling_rules")
