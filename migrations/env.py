"""Alembic environment: the URL comes from the caller (``flywheel db upgrade``) or ``Settings.from_env()``."""

from __future__ import annotations

from typing import Any

from alembic import context

import flywheel.models  # noqa: F401  (registers every table on the metadata)
from flywheel.core.config import Settings
from flywheel.core.db import Base, make_engine
from flywheel.domain.partitions import include_in_schema_check

config = context.config

# Tables that other libraries own: APScheduler's job store creates its own.
EXTERNAL_TABLES = {"apscheduler_jobs"}


def include_name(name: str | None, type_: str, _parent: Any) -> bool:
    return not (type_ == "table" and name in EXTERNAL_TABLES)


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    engine = make_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_name=include_name,
        include_object=include_in_schema_check(connection.dialect.name),
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
