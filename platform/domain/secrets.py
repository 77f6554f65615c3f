"""Secrets shared by every process of a deployment, stored in the database: created once, race-free.

The dashboard signs its session cookies (and so its CSRF tokens) with a secret. A secret made up per process breaks
sign-in under more than one worker or host: the form's token is issued under one process's secret and checked under
another's. So when ``FLYWHEEL_SECRET_KEY`` is not set, the first process to need the secret stores a random one
(``INSERT … ON CONFLICT DO NOTHING`` on its name, then read back): every process, on every host, reads the same.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Engine, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from flywheel.core.db import utcnow
from flywheel.models.app_secrets import AppSecret

SESSION_SECRET = "dashboard_session"


def stored_secret(engine: Engine, name: str = SESSION_SECRET) -> str:
    """The secret ``name`` (256 random bits, hex), created by the first caller; every later caller, in any
    process, gets the same value."""
    row = {"name": name, "value": secrets.token_hex(32), "created_at": utcnow()}
    with engine.begin() as conn:
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            upsert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(AppSecret)
            conn.execute(upsert.values(**row).on_conflict_do_nothing(index_elements=[AppSecret.name]))
        elif conn.scalar(select(AppSecret.value).where(AppSecret.name == name)) is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(AppSecret).values(**row))
            except IntegrityError:
                pass  # another process stored it first: theirs is read below
        value = conn.scalar(select(AppSecret.value).where(AppSecret.name == name))
    assert value is not None
    return str(value)
