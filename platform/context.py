"""Request-scoped access to the application's database, settings and session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app, g

if TYPE_CHECKING:
    from sqlalchemy import Connection
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


def get_connection() -> Connection:
    """The request's connection and its one transaction, opened on first use. Hot paths (the key lookup,
    ingestion) run on it directly; an ORM view's session joins it (:func:`get_session`)."""
    if "connection" not in g:
        g.connection = get_db().engine.connect()
    connection: Connection = g.connection
    return connection


def get_session() -> Session:
    """The request's session, on the request's connection, whose transaction it takes over: its commit commits
    it. The view commits; teardown rolls back what was not committed."""
    if "session" not in g:
        g.session = get_db().sessionmaker(bind=get_connection(), join_transaction_mode="control_fully")
    session: Session = g.session
    return session


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("session", None)
    if session is not None:
        session.close()
    connection = g.pop("connection", None)
    if connection is not None:
        connection.close()  # rolls back whatever the view did not commit
