"""label quality: ``predictions.in_sample``, the caller's mark that the logging model trained on the item, and
room in ``label_quality_results.oos_source`` for the logging model's name

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting a partition (catalog only, any size).
    op.add_column("predictions", sa.Column("in_sample", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("label_quality_results") as batch:
        batch.alter_column("oos_source", type_=sa.String(240), existing_type=sa.String(32), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("label_quality_results") as batch:
        batch.alter_column("oos_source", type_=sa.String(32), existing_type=sa.String(240), existing_nullable=True)
    op.drop_column("predictions", "in_sample")
