"""core: feedback partitioned by its prediction's month on PostgreSQL, idempotency keys in feedback_keys

Every feedback row gets ``prediction_created_at``, its prediction's ``created_at`` (back-filled from the predictions;
a row whose prediction is gone keeps its own ``created_at``, so nothing is lost). On PostgreSQL the feedback table
then becomes a table partitioned by range of that column: one partition per month that the predictions have one for
(so a month's predictions and their feedback drop together), and a default partition; every row is copied over and
the id sequence kept. The idempotency key ``(tenant_id, client_id)`` moves to ``feedback_keys``, as the predictions'
moved to ``prediction_keys`` in 0008. See ``flywheel.domain.partitions``. SQLite only gains the column. Both get a
partial index on the reviewer decisions (``ix_feedback_reviewed``), which "has a person reviewed it" reads.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import flywheel.core.db

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The feedback table's columns before this revision, in their order.
COLUMNS = (
    "id",
    "tenant_id",
    "prediction_id",
    "client_id",
    "label",
    "source",
    "source_id",
    "decision",
    "note",
    "created_at",
    "received_at",
    "content_hash",
)
REVIEWED = sa.text("source = 'reviewer'")
BACKFILL = (
    "UPDATE feedback SET prediction_created_at = coalesce("
    "(SELECT p.created_at FROM predictions p WHERE p.id = feedback.prediction_id), created_at)"
)


def _months_of_predictions() -> list[datetime]:
    """The months the predictions have a partition for (``predictions_yYYYYmMM``)."""
    names = op.get_bind().execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass('predictions') AND c.relname LIKE 'predictions\\_y%'"
        )
    )
    return sorted(datetime.strptime(name[-8:], "y%Ym%m").replace(tzinfo=UTC) for (name,) in names)


def _partition(month: datetime) -> None:
    index = month.year * 12 + month.month
    end = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
    op.execute(
        f"CREATE TABLE feedback_y{month.year:04d}m{month.month:02d} PARTITION OF feedback "
        f"FOR VALUES FROM ('{month.isoformat()}') TO ('{end.isoformat()}')"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        with op.batch_alter_table("feedback") as batch:
            batch.add_column(
                sa.Column("prediction_created_at", flywheel.core.db.UTCDateTime(timezone=True), nullable=True)
            )
        op.execute(BACKFILL)
        with op.batch_alter_table("feedback") as batch:
            batch.alter_column(
                "prediction_created_at", existing_type=flywheel.core.db.UTCDateTime(timezone=True), nullable=False
            )
        _index_reviewed()
        return
    op.execute("ALTER TABLE feedback RENAME TO feedback_flat")
    op.execute("ALTER TABLE feedback_flat DROP CONSTRAINT pk_feedback")
    op.execute("ALTER TABLE feedback_flat DROP CONSTRAINT uq_feedback_tenant_id_client_id")
    op.execute("ALTER TABLE feedback_flat DROP CONSTRAINT fk_feedback_tenant_id_tenants")
    op.execute("DROP INDEX ix_feedback_prediction_id")
    op.execute(
        "CREATE TABLE feedback (LIKE feedback_flat INCLUDING DEFAULTS, prediction_created_at timestamptz NOT NULL) "
        "PARTITION BY RANGE (prediction_created_at)"
    )
    op.execute("ALTER TABLE feedback ADD CONSTRAINT pk_feedback PRIMARY KEY (id, prediction_created_at)")
    op.execute(
        "ALTER TABLE feedback ADD CONSTRAINT fk_feedback_tenant_id_tenants "
        "FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE"
    )
    op.create_index("ix_feedback_prediction_id", "feedback", ["prediction_id"])
    _index_reviewed()
    op.create_table(
        "feedback_keys",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("feedback_id", sa.Integer(), nullable=False),
        sa.Column("prediction_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_feedback_keys_tenant_id_tenants", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "client_id", name="pk_feedback_keys"),
    )
    for month in _months_of_predictions():
        _partition(month)
    op.execute("CREATE TABLE feedback_default PARTITION OF feedback DEFAULT")
    columns = ", ".join(COLUMNS)
    op.execute(
        f"INSERT INTO feedback ({columns}, prediction_created_at) "
        f"SELECT {', '.join('f.' + c for c in COLUMNS)}, coalesce(p.created_at, f.created_at) "
        "FROM feedback_flat f LEFT JOIN predictions p ON p.id = f.prediction_id"
    )
    op.execute(
        "INSERT INTO feedback_keys (tenant_id, client_id, feedback_id, prediction_created_at) "
        "SELECT tenant_id, client_id, id, prediction_created_at FROM feedback"
    )
    op.execute("ALTER SEQUENCE feedback_id_seq OWNED BY feedback.id")
    op.execute("DROP TABLE feedback_flat")


def _index_reviewed() -> None:
    op.create_index(
        "ix_feedback_reviewed",
        "feedback",
        ["prediction_id", "prediction_created_at"],
        postgresql_where=REVIEWED,
        sqlite_where=REVIEWED,
    )


def downgrade() -> None:
    op.drop_index("ix_feedback_reviewed", table_name="feedback")
    if op.get_bind().dialect.name != "postgresql":
        with op.batch_alter_table("feedback") as batch:
            batch.drop_column("prediction_created_at")
        return
    op.execute("ALTER TABLE feedback RENAME TO feedback_parted")
    op.execute("ALTER TABLE feedback_parted DROP CONSTRAINT pk_feedback")
    op.execute("ALTER TABLE feedback_parted DROP CONSTRAINT fk_feedback_tenant_id_tenants")
    op.execute("DROP INDEX ix_feedback_prediction_id")
    op.execute("CREATE TABLE feedback (LIKE feedback_parted INCLUDING DEFAULTS)")
    op.execute("ALTER TABLE feedback DROP COLUMN prediction_created_at")
    columns = ", ".join(COLUMNS)
    op.execute(f"INSERT INTO feedback ({columns}) SELECT {columns} FROM feedback_parted")
    op.execute("ALTER SEQUENCE feedback_id_seq OWNED BY feedback.id")
    op.execute("DROP TABLE feedback_parted")
    op.execute("DROP TABLE feedback_keys")
    op.create_primary_key("pk_feedback", "feedback", ["id"])
    op.create_unique_constraint("uq_feedback_tenant_id_client_id", "feedback", ["tenant_id", "client_id"])
    op.create_index("ix_feedback_prediction_id", "feedback", ["prediction_id"])
    op.create_foreign_key(
        "fk_feedback_tenant_id_tenants", "feedback", "tenants", ["tenant_id"], ["id"], ondelete="CASCADE"
    )
