"""core: a partial index on labeled predictions (task, tenant), for training-set assembly at scale

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LABELED = sa.text("effective_label IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_predictions_labeled",
        "predictions",
        ["task_id", "tenant_id"],
        postgresql_where=LABELED,
        sqlite_where=LABELED,
    )


def downgrade() -> None:
    op.drop_index("ix_predictions_labeled", table_name="predictions")
