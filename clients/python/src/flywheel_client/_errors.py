"""One exception type for everything the API or the network can answer: :class:`FlywheelError`."""

from __future__ import annotations

import email.utils
import json
import time
from http import HTTPStatus
from typing import Any

import httpx

__all__ = ["FlywheelConnectionError", "FlywheelError"]


class FlywheelError(Exception):
    """An error answer from the Flywheel API, with the fields of its RFC 9457 ``application/problem+json`` body.

    ``status`` is the HTTP status code (``None`` for :class:`FlywheelConnectionError`: no answer at all);
    ``errors`` lists item-level problems as ``{"loc": [...], "msg": "..."}`` (a 422 names every bad item by its
    index); ``retry_after`` is the ``Retry-After`` header in seconds, when the server sent one (429, 503).
    """

    def __init__(
        self,
        status: int | None,
        title: str,
        detail: str | None = None,
        *,
        type: str = "about:blank",
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, title, detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors: list[dict[str, Any]] = errors if errors is not None else []
        self.retry_after = retry_after

    def __str__(self) -> str:
        head = f"{self.status} {self.title}" if self.status is not None else self.title
        return f"{head}: {self.detail}" if self.detail else head

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, title={self.title!r}, detail={self.detail!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the keyword-only arguments
        return (_rebuild, (type(self), self.__dict__.copy()))

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again may succeed: no answer, 408, 429 or any 5xx."""
        return self.status is None or self.status in (408, 429) or self.status >= 500

    @classmethod
    def from_response(cls, response: httpx.Response) -> FlywheelError:
        """The error a non-2xx answer stands for; a body that is not problem+json still gives status and title."""
        status = response.status_code
        try:
            body = json.loads(response.content) if response.content else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        try:
            default_title = HTTPStatus(status).phrase
        except ValueError:
            default_title = response.reason_phrase or "Error"
        detail = body.get("detail")
        if detail is None and not body and response.content:
            detail = response.text[:300]
        errors = body.get("errors")
        return cls(
            status,
            str(body.get("title") or default_title),
            None if detail is None else str(detail),
            type=str(body.get("type") or "about:blank"),
            errors=[e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else None,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )


class FlywheelConnectionError(FlywheelError):
    """No answer: the server could not be reached, the connection broke, or the request timed out.

    A subclass of :class:`FlywheelError` with ``status`` ``None``; the httpx exception is its ``__cause__``.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(None, "Connection failed", detail, type="about:blank")


def _rebuild(cls: type[FlywheelError], state: dict[str, Any]) -> FlywheelError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("status"), state.get("title"), state.get("detail"))
    error.__dict__.update(state)
    return error


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (never negative): delay-seconds or an HTTP date; ``None`` when absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
