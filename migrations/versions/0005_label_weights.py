"""Label quality: the training weight of each scored label (the probability that it is right).

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-27 08:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("label_quality_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("train_weight", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("label_quality_results", schema=None) as batch_op:
        batch_op.drop_column("train_weight")
