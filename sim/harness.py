"""The running system an arm replays through: a fresh database, the web app on a real socket, an HTTP client."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.core.migrate import upgrade
from flywheel.domain.auth import create_key
from sim.scenario import SimConfig


def arm_sqlite_path(out: Path, arm: str) -> Path:
    """Where an arm's SQLite database lives (and stays after the run, for inspection)."""
    return out / f"{arm}.db"


@contextmanager
def arm_database(cfg: SimConfig, arm: str) -> Iterator[str]:
    """A fresh database for one arm: a SQLite file under ``out``, or a new database on the PostgreSQL server
    (dropped afterwards)."""
    if not cfg.database_url or cfg.database_url.startswith("sqlite"):
        path = arm_sqlite_path(cfg.out, arm)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        return
    name = f"flywheel_sim_{arm}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(cfg.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(cfg.database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class LiveServer:
    """The Flywheel web app on a real socket (127.0.0.1, a free port), served from a thread."""

    def __init__(self, settings: Settings, db: Database) -> None:
        from werkzeug.serving import WSGIRequestHandler, make_server

        from flywheel.app import create_app

        class QuietHandler(WSGIRequestHandler):
            def log_request(self, *_args: Any, **_kwargs: Any) -> None:  # the app logs its own requests
                pass

        app = create_app(settings, db=db)
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


class ApiClient:
    """A product backend and a customer-success admin, talking HTTP; ``keys`` holds each tenant's key."""

    def __init__(self, base: str, admin_key: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.admin = admin_key
        self.keys: dict[str, str] = {}

    def call(self, method: str, path: str, key: str, body: Any = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        r = self.http.request(method, self.base + path, json=body, headers={"Authorization": f"Bearer {key}"})
        if r.status_code not in ok:
            raise RuntimeError(f"{method} {path} answered {r.status_code}: {r.text[:500]}")
        return r.json() if r.content and r.headers.get("content-type", "").endswith("json") else None


@dataclass(frozen=True)
class ArmSystem:
    """One arm's running system: what the scheduler's jobs need (``db``, ``settings``) and the HTTP side."""

    arm: str
    settings: Settings
    db: Database
    api: ApiClient


@contextmanager
def running_system(cfg: SimConfig, arm: str) -> Iterator[ArmSystem]:
    """A fresh, migrated database with an admin key, and the web app serving it, for one arm."""
    with arm_database(cfg, arm) as url:
        overrides = {
            "artifacts_dir": cfg.out / arm / "artifacts",
            "label_quality_enabled": arm == "cleaned",
            **cfg.settings,
        }
        settings = Settings(database_url=url, log_level="WARNING", **overrides)
        db = Database(url)
        upgrade(db.engine)
        with db.session() as session:
            admin_key = create_key(session, tenant=None, scopes=["admin"], name="simulation")[1]
        server = LiveServer(settings, db)
        try:
            yield ArmSystem(arm, settings, db, ApiClient(server.url, admin_key))
        finally:
            server.close()
            db.dispose()
