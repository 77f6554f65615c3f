"""Operations: health, readiness, Prometheus metrics, the OpenAPI document and its rendering."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template
from sqlalchemy import text

from flywheel.core import metrics
from flywheel.core.errors import ServiceUnavailable
from flywheel.core.migrate import is_current
from flywheel.web.context import get_db
from flywheel.web.spec import openapi_document

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Ready when the database answers and its schema is at the latest migration."""
    db = get_db()
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = is_current(db.engine)
    except Exception:
        raise ServiceUnavailable("the database is unreachable") from None
    if not current:
        raise ServiceUnavailable("the database schema is not at the latest migration: run `flywheel db upgrade`")
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


@bp.get("/docs")
def docs() -> str:
    """The API reference, rendered on the server (no CDN: customers run air-gapped)."""
    return render_template("docs.html", doc=openapi_document())
