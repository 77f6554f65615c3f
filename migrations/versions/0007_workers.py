"""Scale-out: training runs record their attempts, queue and last dispatch; workers register themselves.

Revision ID: 0007
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import flywheel.core.db

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("queue", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("dispatched_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=True))
    op.create_table(
        "worker_processes",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("queues", sa.String(length=100), nullable=False),
        sa.Column("device", sa.String(length=200), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_processes")),
    )


def downgrade() -> None:
    op.drop_table("worker_processes")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("dispatched_at")
        batch.drop_column("queue")
        batch.drop_column("attempts")
