"""core: predictions partitioned by month on PostgreSQL, idempotency keys in prediction_keys

On PostgreSQL the predictions table becomes a table partitioned by range of ``created_at``: one partition per month
that holds rows, the next three months, and a default partition; the rows are copied over, nothing is lost. The
idempotency key moves to ``prediction_keys`` and the foreign keys to ``predictions.id`` are dropped (a partitioned
table's unique keys must include the partition key). See ``flywheel.domain.partitions``. SQLite is untouched.

Revision ID: 0008
Revises: 0006, 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
# Merges the core and feedback branches: label_quality_results (feedback) holds a foreign key to predictions.id
# that this revision drops, so it must come after both.
down_revision: str | Sequence[str] | None = ("0006", "0005")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONTHS_AHEAD = 3


def _months(first: datetime, last: datetime) -> list[datetime]:
    out, index = [], first.year * 12 + first.month - 1
    while True:
        month = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
        if month > last:
            return out
        out.append(month)
        index += 1


def _partition(month: datetime) -> None:
    index = month.year * 12 + month.month
    end = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
    op.execute(
        f"CREATE TABLE predictions_y{month.year:04d}m{month.month:02d} PARTITION OF predictions "
        f"FOR VALUES FROM ('{month.isoformat()}') TO ('{end.isoformat()}')"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE feedback DROP CONSTRAINT fk_feedback_prediction_id_predictions")
    op.execute("ALTER TABLE label_quality_results DROP CONSTRAINT fk_label_quality_results_prediction_id_predictions")
    op.execute("ALTER TABLE predictions RENAME TO predictions_flat")
    op.execute("ALTER TABLE predictions_flat DROP CONSTRAINT pk_predictions")
    op.execute("ALTER TABLE predictions_flat DROP CONSTRAINT uq_predictions_tenant_id_client_id")
    op.execute("DROP INDEX ix_predictions_tenant_task_created")
    op.execute("CREATE TABLE predictions (LIKE predictions_flat INCLUDING DEFAULTS) PARTITION BY RANGE (created_at)")
    op.execute("ALTER TABLE predictions ADD CONSTRAINT pk_predictions PRIMARY KEY (id, created_at)")
    for column, table in (("tenant_id", "tenants"), ("task_id", "tasks")):
        op.execute(
            f"ALTER TABLE predictions ADD CONSTRAINT fk_predictions_{column}_{table} "
            f"FOREIGN KEY ({column}) REFERENCES {table} (id) ON DELETE CASCADE"
        )
    op.create_index("ix_predictions_tenant_task_created", "predictions", ["tenant_id", "task_id", "created_at"])
    op.create_table(
        "prediction_keys",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_prediction_keys_tenant_id_tenants", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "client_id", name="pk_prediction_keys"),
    )
    now = datetime.now(UTC)
    span = op.get_bind().execute(sa.text("SELECT min(created_at), max(created_at) FROM predictions_flat")).one()
    first = min(span[0] or now, now).astimezone(UTC)
    last = max(span[1] or now, now).astimezone(UTC)
    index = last.year * 12 + last.month - 1 + MONTHS_AHEAD
    for month in _months(
        datetime(first.year, first.month, 1, tzinfo=UTC), datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
    ):
        _partition(month)
    op.execute("CREATE TABLE predictions_default PARTITION OF predictions DEFAULT")
    op.execute("INSERT INTO predictions SELECT * FROM predictions_flat")
    op.execute("INSERT INTO prediction_keys SELECT tenant_id, client_id, id, created_at FROM predictions_flat")
    op.execute("ALTER SEQUENCE predictions_id_seq OWNED BY predictions.id")
    op.execute("DROP TABLE predictions_flat")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE predictions RENAME TO predictions_parted")
    op.execute("ALTER TABLE predictions_parted DROP CONSTRAINT pk_predictions")
    op.execute("DROP INDEX ix_predictions_tenant_task_created")
    op.execute("CREATE TABLE predictions (LIKE predictions_parted INCLUDING DEFAULTS)")
    op.execute("INSERT INTO predictions SELECT * FROM predictions_parted")
    op.execute("ALTER SEQUENCE predictions_id_seq OWNED BY predictions.id")
    op.execute("DROP TABLE predictions_parted")
    op.execute("DROP TABLE prediction_keys")
    op.create_primary_key("pk_predictions", "predictions", ["id"])
    op.create_unique_constraint("uq_predictions_tenant_id_client_id", "predictions", ["tenant_id", "client_id"])
    op.create_index("ix_predictions_tenant_task_created", "predictions", ["tenant_id", "task_id", "created_at"])
    for column, table in (("tenant_id", "tenants"), ("task_id", "tasks")):
        op.create_foreign_key(
            f"fk_predictions_{column}_{table}", "predictions", table, [column], ["id"], ondelete="CASCADE"
        )
    for table in ("feedback", "label_quality_results"):
        op.create_foreign_key(
            f"fk_{table}_prediction_id_predictions", table, "predictions", ["prediction_id"], ["id"], ondelete="CASCADE"
        )
