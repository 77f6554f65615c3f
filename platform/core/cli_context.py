"""The object every ``flywheel`` command receives: the settings, a lazily opened database, a session scope.

It lives beneath the areas so that each area's command group (``flywheel.<area>.cli``) can take it without
importing the top-level command line, which imports them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from pydantic import BaseModel, ValidationError
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

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], options: Mapping[str, str], **values: Any) -> M:
    """``values`` through the API's own request schema ``model``, so a command accepts exactly what the endpoint
    does. A rejected value is a CLI error naming its option (``options`` maps a field to it); a pattern mismatch
    says what the field's description says it must be, not the regular expression."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_context=False, include_input=False):
            field = str(err["loc"][0]) if err["loc"] else ""
            info = model.model_fields.get(field)
            msg = err["msg"]
            if err["type"] == "string_pattern_mismatch" and info is not None and info.description:
                msg = f"not {info.description.split(';')[0]}"
            problems.append(f"{options.get(field, field)}: {msg}")  # (no value: it may be a secret)
        raise click.ClickException("; ".join(problems)) from None
