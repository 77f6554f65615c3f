"""Shared fixtures: real databases (a SQLite file always, PostgreSQL when FLYWHEEL_TEST_DATABASE_URL is set),
the app, its test client, tenants and keys.

Every database test runs once per backend. Each test session gets its own PostgreSQL database (created and dropped
here), so parallel runs on one server never collide; between tests, every table is emptied.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from flywheel.app import create_app
from flywheel.core.config import Settings
from flywheel.core.db import Base, Database
from flywheel.core.migrate import upgrade
from flywheel.domain.auth import create_key
from flywheel.models.records import Task, Tenant

from support import LABELS, World

PG_URL = os.environ.get("FLYWHEEL_TEST_DATABASE_URL")
BACKENDS = ["sqlite", *(["postgresql"] if PG_URL else [])]


@pytest.fixture(scope="session", params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A migrated database for the whole session, per backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'flywheel.db'}"
        db = Database(url)
        upgrade(db.engine)
        yield db
        db.dispose()
        return
    assert PG_URL is not None
    name = f"flywheel_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    upgrade(db.engine)
    yield db
    db.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def db(database: Database) -> Iterator[Database]:
    """The session's database, emptied after each test."""
    yield database
    tables = [t for t in reversed(Base.metadata.sorted_tables)]
    with database.engine.begin() as conn:
        if database.engine.dialect.name == "postgresql":
            names = ", ".join(f'"{t.name}"' for t in tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for t in tables:
                conn.execute(t.delete())
            if conn.execute(text("SELECT name FROM sqlite_master WHERE name='apscheduler_jobs'")).first():
                conn.execute(text("DELETE FROM apscheduler_jobs"))


@pytest.fixture
def settings(db: Database, tmp_path: Path) -> Settings:
    return Settings(database_url=db.url, artifacts_dir=tmp_path / "artifacts", secret_key="test-secret")


@pytest.fixture
def app(settings: Settings, db: Database) -> Flask:
    return create_app(settings, db=db)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def world(db: Database) -> World:
    with db.session() as session:
        acme = Tenant(slug="acme", name="Acme Corp")
        globex = Tenant(slug="globex", name="Globex")
        session.add_all([acme, globex, Task(name="intent", labels=LABELS, label_descriptions={}, description="")])
        session.flush()
        keys = {
            "admin": create_key(session, tenant=None, scopes=["admin"])[1],
            "acme_ingest": create_key(session, tenant=acme, scopes=["ingest"])[1],
            "acme_read": create_key(session, tenant=acme, scopes=["read"])[1],
            "acme_rw": create_key(session, tenant=acme, scopes=["ingest", "read"])[1],
            "globex_rw": create_key(session, tenant=globex, scopes=["ingest", "read"])[1],
        }
    return World(db=db, task="intent", labels=LABELS, **keys)
