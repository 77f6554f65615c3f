"""Request-scoped access to the application's database, settings and session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app, g

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from flywheel.config import Settings
    from flywheel.db import Database
    from flywheel.ingest import TaskCatalog

EXTENSION = "flywheel"


def get_db() -> Database:
    db: Database = current_app.extensions[EXTENSION]["db"]
    return db


def get_settings() -> Settings:
    settings: Settings = current_app.extensions[EXTENSION]["settings"]
    return settings


def get_tasks() -> TaskCatalog:
    tasks: TaskCatalog = current_app.extensions[EXTENSION]["tasks"]
    return tasks


def get_session() -> Session:
    """The request's session, opened on first use; the view commits, teardown rolls back what was not committed."""
    if "session" not in g:
        g.session = get_db().sessionmaker()
    session: Session = g.session
    return session


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("session", None)
    if session is not None:
        session.close()  # rolls back whatever the view did not commit
