"""The application factory: ``create_app()`` builds one WSGI app; nothing is created at import time."""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

from flask import Flask, Request, Response, g, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from sqlalchemy.exc import SQLAlchemyError

from flywheel.api import admin, ops, predict, predictions, rights, tasks
from flywheel.core import errors, logs, metrics
from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.dashboard import views as dashboard_views
from flywheel.domain.auth import KeyCache
from flywheel.domain.ingest import TaskCatalog
from flywheel.domain.secrets import stored_secret
from flywheel.feedback import api as feedback_api
from flywheel.monitoring import api as monitoring_api
from flywheel.retrain import api as retrain_api
from flywheel.retrain.serving import InferenceSlots
from flywheel.web.context import EXTENSION, close_session, get_db, get_session, get_settings

__all__ = ["create_app", "create_server_app", "get_db", "get_session", "get_settings"]

log = logging.getLogger("flywheel.http")


def create_app(settings: Settings | None = None, *, db: Database | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key or None,  # None: the secret stored in the database, on first use
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        FLYWHEEL_MAX_BODY_BYTES=settings.max_body_bytes,
        FLYWHEEL_MAX_BATCH_ITEMS=settings.max_batch_items,
        JSON_SORT_KEYS=False,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = {
        # Each worker thread keeps a connection (HeldConnections): the pool keeps room for all of them.
        "db": db or Database(settings.database_url, pool_size=max(5, settings.threads + 1)),
        "settings": settings,
        "tasks": TaskCatalog(),
        "keys": KeyCache(settings.key_cache_seconds),
        # Made here, before gunicorn forks its workers (the app is preloaded): one bound for all of them.
        "inference": InferenceSlots.for_machine(settings.serve_inference_slots),
    }
    app.session_interface = StoredSecretSessions()
    errors.init_app(app)
    app.teardown_appcontext(close_session)
    _instrument(app)
    for blueprint in (
        ops.bp,
        admin.bp,
        tasks.bp,
        predictions.bp,
        rights.bp,
        dashboard_views.bp,
        predict.bp,
        retrain_api.bp,
        feedback_api.bp,
        monitoring_api.bp,
    ):
        app.register_blueprint(blueprint)
    return app


class StoredSecretSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, signed with ``FLYWHEEL_SECRET_KEY`` or, when that is not set, with the secret
    stored in the database (:func:`~flywheel.domain.secrets.stored_secret`), so that every worker and every host
    of a deployment accepts the cookies (and CSRF tokens) any of them issued.

    The stored secret is read on the first request that uses a session (the dashboard's), not in ``create_app``:
    the app starts, and answers the API, while the database is away. Until it is read, a request gets no session
    (the dashboard answers 503)."""

    SESSION_BLUEPRINTS = frozenset({"dashboard"})

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not app.secret_key:
            if not self._uses_sessions(app, request.path):
                return None  # the API has no sessions
            try:
                with self._lock:
                    if not app.secret_key:
                        app.secret_key = stored_secret(app.extensions[EXTENSION]["db"].engine)
            except SQLAlchemyError as exc:
                log.warning("the session secret could not be read from the database: %s", type(exc).__name__)
                return None
        return super().open_session(app, request)

    def _uses_sessions(self, app: Flask, path: str) -> bool:
        # (The session is opened before the URL is matched: ``request.blueprint`` is not known yet.)
        prefixes = [
            app.blueprints[name].url_prefix or "/" for name in self.SESSION_BLUEPRINTS if name in app.blueprints
        ]
        return any(path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in prefixes)

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        if app.secret_key:
            super().save_session(app, session, response)


def create_server_app(settings: Settings | None = None) -> Flask:
    """``create_app()`` for a long-running server process (gunicorn preloads it before forking its workers).

    Everything built so far lives as long as the process, so it is moved out of the garbage collector's reach
    (``gc.freeze``, as the gc docs advise for pre-fork servers): full collections no longer walk the app's ~130,000
    objects, which cost about 7 ms per 1,000-item batch (measured), and workers keep sharing those pages."""
    app = create_app(settings)
    gc.freeze()
    return app


def _instrument(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        metrics.LATENCY.labels(request.method, endpoint).observe(elapsed)
        principal = g.get("principal")
        log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "ms": round(elapsed * 1000, 2),
                "tenant": principal.tenant_slug if principal else None,
                "key_id": principal.key_id if principal else None,
            },
        )
        return response
