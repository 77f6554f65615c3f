"""The object every ``flywheel`` command receives: the settings, a lazily opened database, a session scope.

It lives beneath the areas so that each area's command group (``flywheel.<area>.cli``) can take it without
importing the top-level command line, which imports them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy.orm import Session

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.core.errors import ApiError


class Context:
    """Settings and a database opened on first use; ``session()`` turns domain errors into CLI errors."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings.database_url)
        return self._db

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with self.db.session() as session:
                yield session
        except ApiError as exc:
            raise click.ClickException(exc.detail) from None
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None


pass_ctx = click.make_pass_decorator(Context)
