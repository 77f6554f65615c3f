"""One error shape: every error, from any endpoint, renders as RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, json
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """A domain error with an HTTP status; ``errors`` lists item-level problems as ``{"loc": [...], "msg": ...}``."""

    status = 400

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        if status is not None:
            self.status = status
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401

    def __init__(self, detail: str = "a valid API key is required (Authorization: Bearer <key>)") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="flywheel"'})


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class Unprocessable(ApiError):
    status = 422


class ServiceUnavailable(ApiError):
    status = 503

    def __init__(self, detail: str = "the database is unreachable; retry shortly", retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


def problem(
    status: int,
    detail: str | None = None,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    if detail:
        body["detail"] = detail
    if errors is not None:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return problem(exc.status, exc.detail, errors=exc.errors, headers=exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        detail = exc.description if status != 500 else None
        return problem(status, detail, headers=headers)

    @app.errorhandler(IntegrityError)
    def _integrity_error(exc: IntegrityError) -> Response:
        # A uniqueness or reference check lost a race to a concurrent request (the services check first; only
        # the database sees both): the request is fine, the data moved under it.
        log.warning("integrity error (a concurrent change): %s", type(exc.orig).__name__)
        return problem(409, "the request conflicts with a concurrent change to the same data; retry it")

    @app.errorhandler(DataError)
    def _data_error(exc: DataError) -> Response:
        # A value the schemas let through but the database cannot store: a validation gap, logged to be closed.
        log.warning("data error (a value the database cannot store): %s", type(exc.orig).__name__)
        return problem(422, "a value in the request is outside what the database can store")

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def _db_error(exc: DBAPIError) -> Response:
        if exc.connection_invalidated or _is_unreachable(exc):
            log.warning("database unreachable: %s", type(exc.orig).__name__)
            err = ServiceUnavailable()
            return problem(err.status, err.detail, headers=err.headers)
        log.exception("database error")
        return problem(500, "internal error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "internal error")


def _is_unreachable(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    markers = (
        "connection refused",
        "could not connect",
        "server closed the connection",
        "connection timeout",
        "timeout expired",
        "unable to open database",
        "terminating connection",
        "database is locked",
        "the database system is",
        "no such host",
        "connection is closed",
        "connection reset",  # e.g. connecting while PostgreSQL restarts: "… failed: Connection reset by peer"
        "broken pipe",
        "no connection to the server",
    )
    return isinstance(exc, OperationalError) and any(m in text for m in markers)
