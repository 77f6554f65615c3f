"""label quality and monitoring: holdout hygiene: holdout label verdicts, the clean SLA value and its setting

Revision ID: 0013
Revises: 0012, 0003
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
# It also merges the monitoring branch (0003): slas and sla_evaluations must exist before their columns are added.
down_revision: str | Sequence[str] | None = ("0012", "0003")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("label_quality_results") as batch:
        batch.add_column(sa.Column("holdout", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("slas") as batch:
        batch.add_column(sa.Column("agreement", sa.String(length=8), server_default="raw", nullable=False))
    with op.batch_alter_table("sla_evaluations") as batch:
        batch.add_column(sa.Column("value_clean", sa.Float(), nullable=True))
        batch.add_column(sa.Column("ci_low_clean", sa.Float(), nullable=True))
        batch.add_column(sa.Column("ci_high_clean", sa.Float(), nullable=True))
        batch.add_column(sa.Column("agreement", sa.String(length=8), server_default="raw", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("sla_evaluations") as batch:
        batch.drop_column("agreement")
        batch.drop_column("ci_high_clean")
        batch.drop_column("ci_low_clean")
        batch.drop_column("value_clean")
    with op.batch_alter_table("slas") as batch:
        batch.drop_column("agreement")
    with op.batch_alter_table("label_quality_results") as batch:
        batch.drop_column("holdout")
