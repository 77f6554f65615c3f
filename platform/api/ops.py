"""Operations: health, readiness, Prometheus metrics, the OpenAPI document and its rendering."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, Response, current_app, jsonify, render_template
from pydantic import BaseModel
from sqlalchemy import text

from flywheel.core import metrics
from flywheel.core.errors import ServiceUnavailable
from flywheel.core.migrate import is_current
from flywheel.web.context import get_db, get_settings
from flywheel.web.spec import json_response, openapi_document, operation

bp = Blueprint("ops", __name__)


class Health(BaseModel):
    """The process is up."""

    status: Literal["ok"]


class Ready(BaseModel):
    """The database answers and its schema is at the latest migration."""

    status: Literal["ready"]


class OpenApiDocument(BaseModel):
    """This document."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


@operation(bp, "GET", "/healthz", summary="The process is up", scope=None, responses={200: Health}, tag="ops")
def healthz() -> Response:
    return json_response(Health(status="ok"))


@operation(bp, "GET", "/readyz", summary="Ready to serve", scope=None, responses={200: Ready}, errors=(503,), tag="ops")
def readyz() -> Response:
    """Ready when the database answers and its schema is at the latest migration (503 otherwise)."""
    db = get_db()
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = is_current(db.engine)
    except Exception:
        raise ServiceUnavailable("the database is unreachable") from None
    if not current:
        raise ServiceUnavailable("the database schema is not at the latest migration: run `flywheel db upgrade`")
    return json_response(Ready(status="ready"))


@operation(bp, "GET", "/metrics", summary="Prometheus metrics", scope=None, responses={200: "text/plain"}, tag="ops")
def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


def document() -> dict[str, Any]:
    """The OpenAPI document, with this app's batch limits."""
    return openapi_document(
        {
            "max_batch_items": current_app.config["FLYWHEEL_MAX_BATCH_ITEMS"],
            "max_predict_inputs": get_settings().max_predict_inputs,
        }
    )


@operation(
    bp,
    "GET",
    "/openapi.json",
    summary="This OpenAPI 3.1 document",
    scope=None,
    responses={200: OpenApiDocument},
    tag="ops",
)
def openapi() -> Response:
    return jsonify(document())


@operation(bp, "GET", "/docs", summary="The API reference (HTML)", scope=None, responses={200: "text/html"}, tag="ops")
def docs() -> str:
    """The API reference, rendered on the server (no CDN: customers run air-gapped)."""
    return render_template("docs.html", doc=document())
