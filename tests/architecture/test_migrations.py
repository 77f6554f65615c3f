"""The models and the migrations agree, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import flywheel.models  # noqa: F401  (every table)
from flywheel.core.db import Base, Database
from flywheel.core.migrate import is_current
from flywheel.domain.partitions import include_in_schema_check


def test_models_match_migrations(database: Database) -> None:
    with database.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_name": lambda name, type_, _p: not (type_ == "table" and name == "apscheduler_jobs"),
                "include_object": include_in_schema_check(conn.dialect.name),
            },
        )
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations differ; add a revision: {diff}"


def test_database_is_at_the_latest_revision(database: Database) -> None:
    assert is_current(database.engine)
