"""The synchronous client: one method per endpoint, chunked writes, iterators over paginated reads."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Self, Unpack
from urllib.parse import quote

import httpx

from flywheel_client._encoding import (
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    MAX_PREDICT_INPUTS,
    batch_body,
    chunks,
    encode,
    encode_item,
    rfc3339,
)
from flywheel_client._errors import FlywheelConnectionError, FlywheelError
from flywheel_client._version import __version__
from flywheel_client.types import IngestResult, ReviewKind

if TYPE_CHECKING:
    from flywheel_client._logger import BackgroundLogger, LoggerSettings

__all__ = ["Client"]

JSON_TYPE = "application/json"


class Client:
    """A client of the Flywheel HTTP API v1 for one API key.

    ``url`` is the server's base URL (``http://127.0.0.1:8000``); ``timeout`` is in seconds (or an
    ``httpx.Timeout``); ``transport`` replaces httpx's network transport (``httpx.MockTransport`` in tests).
    Every error answer raises :class:`FlywheelError`; no answer at all raises its subclass
    :class:`FlywheelConnectionError` (``status`` ``None``). The client is thread-safe; use it as a context manager
    or call :meth:`close`, which also closes the background loggers it made.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not url:
            raise ValueError("url is required, e.g. http://127.0.0.1:8000")
        if not api_key:
            raise ValueError("api_key is required")
        base_headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": f"{JSON_TYPE}, application/problem+json",
            "User-Agent": f"flywheel-client/{__version__}",
            **(headers or {}),
        }
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=base_headers, timeout=timeout, transport=transport)
        self._loggers: weakref.WeakSet[BackgroundLogger] = weakref.WeakSet()
        self._closed = False

    @property
    def url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the background loggers made by :meth:`logger` (each flushes first, within its ``close_timeout``),
        then the connections. Idempotent."""
        if self._closed:
            return
        for logger in list(self._loggers):
            logger.close()
        self._closed = True
        self._http.close()

    def logger(self, **settings: Unpack[LoggerSettings]) -> BackgroundLogger:
        """A :class:`BackgroundLogger` that sends through this client (see its settings)."""
        from flywheel_client._logger import BackgroundLogger

        if self._closed:
            raise RuntimeError("this client is closed")
        logger = BackgroundLogger(self, **settings)
        self._loggers.add(logger)
        return logger

    # --- the HTTP layer -------------------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request; maps a failure to get any answer to :class:`FlywheelConnectionError`, never raises for
        an HTTP status."""
        headers = {"Content-Type": JSON_TYPE} if content is not None else None
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        try:
            return self._http.request(method, path, params=query, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise FlywheelConnectionError(f"{type(exc).__name__}: {exc} ({method} {self.url}{path})") from exc

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
    ) -> Any:
        """Any endpoint: ``path`` starts with ``/v1/``; returns the decoded JSON answer (``None`` when empty).

        ``None`` values in ``params`` are left out; datetimes are sent as RFC 3339, booleans as ``true``/``false``.
        """
        content = None if json_body is None else encode(json_body)
        return _decode(self._send(method, path, params=params, content=content))

    # --- writes ---------------------------------------------------------------------------------------------------

    def log_predictions(self, items: Iterable[Mapping[str, Any]]) -> IngestResult:
        """``POST /v1/predictions``: log predictions (see :class:`~flywheel_client.types.PredictionItem`).

        Sent in requests of at most 1,000 items (and 4 MiB); each request is atomic on the server. When one fails,
        the requests before it stay stored and :class:`FlywheelError` is raised with the indexes in ``errors``
        counted from the start of ``items``. Every write is idempotent on the items' ``id``: sending the same items
        again stores nothing twice.
        """
        return self._ingest("/v1/predictions", "predictions", items)

    def log_feedback(self, items: Iterable[Mapping[str, Any]]) -> IngestResult:
        """``POST /v1/feedback``: log feedback on earlier predictions (see
        :class:`~flywheel_client.types.FeedbackItem`); chunked and idempotent like :meth:`log_predictions`."""
        return self._ingest("/v1/feedback", "feedback", items)

    def _ingest(self, path: str, root: str, items: Iterable[Mapping[str, Any]]) -> IngestResult:
        encoded = [encode_item(item) for item in items]
        total = IngestResult()
        for start, end in chunks([len(e) for e in encoded], max_items=MAX_BATCH_ITEMS, max_bytes=MAX_BATCH_BYTES):
            response = self._send("POST", path, content=batch_body(root, encoded[start:end]))
            if not response.is_success:
                raise _shift_indexes(FlywheelError.from_response(response), root, start)
            body = _decode(response)
            total += IngestResult(int(body.get("accepted", 0)), int(body.get("duplicates", 0)))
        return total

    def predict(
        self, task: str, inputs: Sequence[str | Mapping[str, Any]], *, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """``POST /v1/predict``: the champion model's predictions, in the order of ``inputs``.

        ``inputs`` are texts or dicts ``{"id", "text", "metadata", "created_at"}`` (only ``text`` required; see
        :class:`~flywheel_client.types.PredictInput`). Each answer is ``{"id", "label", "confidence",
        "probabilities", "model_version"}`` and is logged by the server as a prediction, so feedback can name its
        ``id``. More than 256 inputs go in several requests. ``tenant``: admin keys only.
        """
        if isinstance(inputs, str):
            raise TypeError("inputs must be a list of texts or dicts, not one string")
        items = [{"text": x} if isinstance(x, str) else dict(x) for x in inputs]
        out: list[dict[str, Any]] = []
        for start in range(0, len(items), MAX_PREDICT_INPUTS):
            body: dict[str, Any] = {"task": task, "inputs": items[start : start + MAX_PREDICT_INPUTS]}
            if tenant is not None:
                body["tenant"] = tenant
            response = self._send("POST", "/v1/predict", content=encode(body))
            if not response.is_success:
                raise _shift_indexes(FlywheelError.from_response(response), "inputs", start)
            out.extend(_decode(response)["predictions"])
        return out

    # --- reads ----------------------------------------------------------------------------------------------------

    def get_prediction(self, prediction_id: str, *, tenant: str | None = None) -> dict[str, Any]:
        """``GET /v1/predictions/{id}``: the prediction as posted, with ``feedback`` (oldest first) and
        ``effective_label``. Another tenant's id answers 404, like one that does not exist."""
        result: dict[str, Any] = self.request(
            "GET", f"/v1/predictions/{_seg(prediction_id)}", params={"tenant": tenant}
        )
        return result

    def iter_predictions(
        self,
        task: str | None = None,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        has_feedback: bool | None = None,
        page_size: int = 100,
        tenant: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every prediction that matches, newest first, following ``next_cursor`` of ``GET /v1/predictions``
        (``page_size`` per request, at most 1,000). ``since`` is inclusive, ``until`` exclusive."""
        params = {
            "task": task,
            "since": since,
            "until": until,
            "has_feedback": has_feedback,
            "limit": page_size,
            "tenant": tenant,
        }
        return self._paginate("/v1/predictions", params)

    def review_queue(
        self,
        task: str,
        kind: ReviewKind = "label_issue",
        *,
        limit: int | None = None,
        tenant: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """``GET /v1/review``: predictions most worth a person's time first (``kind`` is ``label_issue`` or
        ``uncertain``); ``limit`` is the page size. Follows ``next_cursor`` when the server pages the queue."""
        return self._paginate("/v1/review", {"task": task, "kind": kind, "limit": limit, "tenant": tenant})

    def review(
        self,
        prediction_id: str,
        decision: str,
        *,
        label: str | None = None,
        note: str | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/review/{prediction_id}``: a reviewer's decision (``keep``, ``relabel`` with ``label``,
        ``discard``), recorded as feedback with source ``reviewer``."""
        body = {k: v for k, v in {"decision": decision, "label": label, "note": note}.items() if v is not None}
        result: dict[str, Any] = self.request(
            "POST", f"/v1/review/{_seg(prediction_id)}", params={"tenant": tenant}, json_body=body
        )
        return result

    # --- data rights ----------------------------------------------------------------------------------------------

    def erase_prediction(self, prediction_id: str, *, tenant: str | None = None) -> dict[str, int]:
        """``DELETE /v1/predictions/{id}``: erase one prediction and everything derived from it (feedback, review
        decisions, label-quality results, cached embeddings, lineage rows); counts per kind of record, zeros when
        it was already gone."""
        result: dict[str, int] = self.request(
            "DELETE", f"/v1/predictions/{_seg(prediction_id)}", params={"tenant": tenant}
        )
        return result

    def erase(
        self,
        prediction_ids: Iterable[str] | None = None,
        *,
        user_id: str | None = None,
        tenant: str | None = None,
    ) -> dict[str, int]:
        """``POST /v1/erasure``: erase predictions by id (sent 1,000 to a request, the counts summed) or every
        prediction whose ``metadata.user_id`` is ``user_id``; exactly one of the two. Idempotent."""
        if (prediction_ids is None) == (user_id is None):
            raise ValueError("give prediction_ids or user_id, not both")
        if user_id is not None:
            result: dict[str, int] = self.request(
                "POST", "/v1/erasure", params={"tenant": tenant}, json_body={"user_id": user_id}
            )
            return result
        totals: dict[str, int] = {}
        for chunk in _id_chunks(prediction_ids or [], MAX_BATCH_ITEMS):
            counts = self.request("POST", "/v1/erasure", params={"tenant": tenant}, json_body={"prediction_ids": chunk})
            for kind, n in counts.items():
                totals[kind] = totals.get(kind, 0) + int(n)
        return totals

    def iter_export(self, task: str, *, tenant: str | None = None) -> Iterator[dict[str, Any]]:
        """``GET /v1/export?format=jsonl``: every prediction of ``task`` with its ``feedback`` and
        ``effective_label``, oldest first, decoded line by line as the server streams them (a million rows never
        sit in memory on either side)."""
        params = {"task": task, "format": "jsonl", "tenant": tenant}
        with self._stream("/v1/export", params) as response:
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def download_export(
        self, task: str, destination: BinaryIO, *, format: str = "parquet", tenant: str | None = None
    ) -> int:
        """``GET /v1/export``: the export of ``task`` as ``parquet`` (or ``jsonl``) bytes written to
        ``destination`` as they arrive; returns the number of bytes written."""
        written = 0
        with self._stream("/v1/export", {"task": task, "format": format, "tenant": tenant}) as response:
            for block in response.iter_bytes():
                destination.write(block)
                written += len(block)
        return written

    @contextmanager
    def _stream(self, path: str, params: Mapping[str, Any]) -> Iterator[httpx.Response]:
        query = {k: _query_value(v) for k, v in params.items() if v is not None}
        try:
            with self._http.stream("GET", path, params=query) as response:
                if response.status_code >= 400:
                    response.read()
                    raise FlywheelError.from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise FlywheelConnectionError(f"{type(exc).__name__}: {exc} (GET {self.url}{path})") from exc

    def list_slas(self, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """``GET /v1/slas``: one row per SLA from its latest evaluation (a read key sees its own tenant's)."""
        return list(self.request("GET", "/v1/slas", params={"tenant": tenant, "limit": 1000})["items"])

    def get_sla(self, tenant: str, task: str) -> dict[str, Any]:
        """The row of ``GET /v1/slas`` for ``tenant`` and ``task``: ``status`` (``met``, ``at_risk``, ``breached``,
        ``insufficient_data``), ``value`` with ``ci_low``/``ci_high``, ``value_clean`` (flagged, unreviewed labels at
        their label weight) with ``ci_low_clean``/``ci_high_clean``, ``agreement`` (``raw`` or ``clean``: the value
        the status reads), ``drift``, …; 404 :class:`FlywheelError` when there is no such SLA."""
        for item in self.list_slas(tenant=tenant):
            if item.get("tenant") == tenant and item.get("task") == task:
                return item
        raise FlywheelError(404, "Not Found", f"no SLA for tenant '{tenant}' on task '{task}'")

    def list_models(
        self, task: str | None = None, *, tenant: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """``GET /v1/models``: model versions, newest first (``rung``, ``status``, ``metrics``, …)."""
        params = {"task": task, "tenant": tenant, "status": status}
        return list(self.request("GET", "/v1/models", params=params)["items"])

    def list_alerts(self, *, tenant: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """``GET /v1/alerts``: SLA and drift alerts, newest first."""
        return list(self.request("GET", "/v1/alerts", params={"tenant": tenant, "limit": limit})["items"])

    def list_tasks(self) -> list[dict[str, Any]]:
        """``GET /v1/tasks``."""
        return list(self.request("GET", "/v1/tasks")["items"])

    def get_task(self, name: str) -> dict[str, Any]:
        """``GET /v1/tasks/{name}``: ``{"name", "labels", "description", …}``."""
        result: dict[str, Any] = self.request("GET", f"/v1/tasks/{_seg(name)}")
        return result

    def create_task(
        self,
        name: str,
        labels: Sequence[str],
        *,
        description: str = "",
        label_descriptions: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/tasks`` (admin keys): a classification task with a fixed label set."""
        body = {
            "name": name,
            "labels": list(labels),
            "description": description,
            "label_descriptions": dict(label_descriptions or {}),
        }
        result: dict[str, Any] = self.request("POST", "/v1/tasks", json_body=body)
        return result

    def _paginate(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        params = dict(params)
        seen: set[str] = set()
        while True:
            page = self.request("GET", path, params=params)
            yield from page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return
            if cursor in seen:
                raise FlywheelError(None, "Pagination loop", f"{path} returned the cursor {cursor!r} twice")
            seen.add(cursor)
            params["cursor"] = cursor


def _id_chunks(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for value in ids:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _seg(value: str) -> str:
    """One path segment, percent-encoded."""
    return quote(value, safe="")


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return rfc3339(value)
    return value


def _decode(response: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; any other answer raises :class:`FlywheelError`."""
    if not response.is_success:
        raise FlywheelError.from_response(response)
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        raise FlywheelError(
            response.status_code, "Invalid response", f"the answer is not JSON: {response.text[:200]!r}"
        ) from None


def _shift_indexes(error: FlywheelError, root: str, offset: int) -> FlywheelError:
    """Item indexes in ``errors`` (``loc: [root, i, ...]``) counted from the caller's first item, not the chunk's."""
    if offset:
        for item in error.errors:
            loc = item.get("loc")
            if isinstance(loc, list) and len(loc) >= 2 and loc[0] == root and isinstance(loc[1], int):
                item["loc"] = [root, loc[1] + offset, *loc[2:]]
    return error
