"""Request-scoped access to the application's database, settings and session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app, g

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session

    from flywheel.core.config import Settings
    from flywheel.core.db import Database
    from flywheel.domain.auth import KeyCache
    from flywheel.domain.ingest import TaskCatalog

EXTENSION = "flywheel"


def get_db() -> Database:
    db: Database = current_app.extensions[EXTENSION]["db"]
    return db


def get_settings() -> Settings:
    settings: Settings = current_app.extensions[EXTENSION]["settings"]
    return settings


def get_keys() -> KeyCache:
    keys: KeyCache = current_app.extensions[EXTENSION]["keys"]
    return keys


def get_tasks() -> TaskCatalog:
    tasks: TaskCatalog = current_app.extensions[EXTENSION]["tasks"]
    return tasks


def get_connection() -> Connection:
    """The request's connection (the worker thread's own, :class:`~flywheel.core.db.HeldConnections`) and its one
    transaction, begun by the first statement that needs one (a statement run ``alone`` is its own). Hot paths (the
    key lookup, ingestion) run on it directly; an ORM view's session joins it (:func:`get_session`)."""
    if "connection" not in g:
        g.connection = get_db().held.acquire()
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
    if g.pop("connection", None) is not None:
        get_db().held.release()  # rolls back whatever the view did not commit; the thread keeps the connection
