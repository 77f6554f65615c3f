"""An in-memory stand-in for the Flywheel API, for testing code that uses the client without a server.

    server = FakeServer(labels={"support-intent": ["card_arrival", "card_linking"]})
    client = Client("http://flywheel.test", "fw_test", transport=server.transport)

It implements the ingestion contract of API.md (atomic batches, duplicates, 409 on changed content, 422 naming
every bad item by index, 413 above the limits), reads with cursor pagination, and failure injection: ``down``
(connection refused), ``fail(status, times, retry_after=...)`` and ``gate`` (requests wait until it is set). It
checks much less than the real server (no probability rules, no tenants beyond a ``tenant`` query parameter).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["FakeServer", "RecordedRequest", "RecordingSleep"]

PROBLEM = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class RecordingSleep:
    """A ``sleep`` for ``BackgroundLogger(sleep=...)`` in tests: records each backoff delay and returns at once
    (after yielding the CPU for ``pause`` seconds)."""

    def __init__(self, pause: float = 0.001) -> None:
        self.delays: list[float] = []
        self.pause = pause

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        time.sleep(self.pause)


@dataclass(frozen=True)
class RecordedRequest:
    """A request the fake answered (or refused): method, path, query parameters and the decoded JSON body."""

    method: str
    path: str
    params: dict[str, str]
    body: Any
    status: int | None  # None: the connection was refused (``down``)

    @property
    def items(self) -> list[dict[str, Any]]:
        """The items of a batch body (``predictions``, ``feedback`` or ``inputs``)."""
        if not isinstance(self.body, dict):
            return []
        for root in ("predictions", "feedback", "inputs"):
            if isinstance(self.body.get(root), list):
                return list(self.body[root])
        return []


@dataclass
class _Failure:
    status: int
    times: int
    retry_after: float | None
    paths: tuple[str, ...] | None


@dataclass
class FakeServer:
    """See the module's documentation. ``labels`` maps each task to its labels; None accepts any task."""

    labels: Mapping[str, Sequence[str]] | None = None
    api_key: str | None = None
    max_batch_items: int = 1000
    max_predict_inputs: int = 256
    slas: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    review_items: list[dict[str, Any]] = field(default_factory=list)
    review_page_size: int | None = None  # None: /v1/review answers one page with no next_cursor
    down: bool = False
    gate: threading.Event | None = None
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    feedback: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._failures: list[_Failure] = []
        self._order: list[str] = []  # prediction ids, oldest first
        self._ids = itertools.count(1)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def fail(
        self, status: int = 503, times: int = 1, *, retry_after: float | None = None, paths: Sequence[str] = ()
    ) -> None:
        """The next ``times`` requests (to ``paths`` only, when given) answer ``status`` with a problem body."""
        with self._lock:
            self._failures.append(_Failure(status, times, retry_after, tuple(paths) or None))

    def posts(self, path: str) -> list[RecordedRequest]:
        """The POST requests to ``path`` the fake answered, in order (refused connections left out)."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path == path and r.status is not None]

    # --- dispatch -------------------------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        gate = self.gate
        if gate is not None:
            gate.wait()
        path = request.url.path
        params = dict(request.url.params)
        try:
            body = json.loads(request.content) if request.content else None
        except ValueError:
            body = None
        with self._lock:
            if self.down:
                self.requests.append(RecordedRequest(request.method, path, params, body, None))
                raise httpx.ConnectError("connection refused (FakeServer.down)", request=request)
            response = self._answer(request, path, params, body)
            self.requests.append(RecordedRequest(request.method, path, params, body, response.status_code))
            return response

    def _answer(self, request: httpx.Request, path: str, params: dict[str, str], body: Any) -> httpx.Response:
        for failure in self._failures:
            if failure.times > 0 and (failure.paths is None or path in failure.paths):
                failure.times -= 1
                headers = {} if failure.retry_after is None else {"Retry-After": f"{failure.retry_after:g}"}
                return _problem(failure.status, "injected failure", headers=headers)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _problem(401, "a valid API key is required (Authorization: Bearer <key>)")
        if request.content and body is None:
            return _problem(400, "the body is not valid JSON")
        route = (request.method, path)
        if route == ("POST", "/v1/predictions"):
            return self._ingest("predictions", body)
        if route == ("POST", "/v1/feedback"):
            return self._ingest("feedback", body)
        if route == ("POST", "/v1/predict"):
            return self._predict(body)
        if route == ("GET", "/v1/predictions"):
            return self._list_predictions(params)
        if request.method == "GET" and path.startswith("/v1/predictions/"):
            found = self.predictions.get(path.removeprefix("/v1/predictions/"))
            if found is None:
                return _problem(404, f"prediction '{path.rsplit('/', 1)[-1]}' does not exist")
            return _json(200, found)
        if route == ("GET", "/v1/review"):
            return self._review(params)
        if route == ("GET", "/v1/slas"):
            tenant = params.get("tenant")
            return _json(200, {"items": [s for s in self.slas if tenant is None or s.get("tenant") == tenant]})
        if route == ("GET", "/v1/models"):
            task = params.get("task")
            return _json(200, {"items": [m for m in self.models if task is None or m.get("task") == task]})
        if route == ("GET", "/v1/alerts"):
            return _json(200, {"items": list(self.alerts)})
        if route == ("GET", "/v1/tasks"):
            return _json(200, {"items": [{"name": t, "labels": list(ls)} for t, ls in (self.labels or {}).items()]})
        return _problem(404, f"no route for {request.method} {path}")

    # --- endpoints ------------------------------------------------------------------------------------------------

    def _ingest(self, root: str, body: Any) -> httpx.Response:
        if not isinstance(body, dict):
            return _problem(422, "the body must be a JSON object")
        items = body[root] if isinstance(body.get(root), list) else [body]
        if len(items) > self.max_batch_items:
            return _problem(413, f"{len(items)} {root} items in one request; the limit is {self.max_batch_items}")
        required = ("id", "task", "text", "label", "confidence") if root == "predictions" else _FEEDBACK_FIELDS
        errors: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            missing = [f for f in required if not isinstance(item, dict) or f not in item]
            errors.extend({"loc": [root, i, f], "msg": "field required"} for f in missing)
            if missing:
                continue
            if root == "predictions":
                errors.extend({"loc": [root, i, f], "msg": m} for f, m in self._check_label(item["task"], item))
            else:
                prediction = self.predictions.get(item["prediction_id"])
                if prediction is None:
                    msg = f"prediction '{item['prediction_id']}' does not exist"
                    errors.append({"loc": [root, i, "prediction_id"], "msg": msg})
                else:
                    errors.extend(
                        {"loc": [root, i, f], "msg": m} for f, m in self._check_label(prediction["task"], item)
                    )
        if errors:
            bad = len({e["loc"][1] for e in errors})
            return _problem(422, f"{bad} of {len(items)} {root} are invalid; nothing was stored", errors=errors)
        store = self.predictions if root == "predictions" else self.feedback
        changed = [
            item["id"] for item in items if item["id"] in store and _content(store[item["id"]]) != _content(item)
        ]
        if changed:
            errors = [{"loc": ["id"], "msg": f"'{cid}' already exists with different content"} for cid in changed]
            return _problem(409, f"{len(changed)} id(s) already exist with different content", errors=errors)
        accepted = duplicates = 0
        for item in items:
            if item["id"] in store:
                duplicates += 1
                continue
            accepted += 1
            if root == "predictions":
                store[item["id"]] = {**item, "feedback": []}
                self._order.append(item["id"])
            else:
                store[item["id"]] = dict(item)
                self.predictions[item["prediction_id"]]["feedback"].append(dict(item))
        return _json(201 if accepted else 200, {"accepted": accepted, "duplicates": duplicates})

    def _check_label(self, task: str, item: Mapping[str, Any]) -> list[tuple[str, str]]:
        if self.labels is None:
            return []
        if task not in self.labels:
            return [("task", f"task '{task}' does not exist")]
        if item["label"] not in self.labels[task]:
            return [("label", f"'{item['label']}' is not a label of task '{task}'")]
        return []

    def _predict(self, body: Any) -> httpx.Response:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or "task" not in body:
            return _problem(422, "task and inputs are required")
        inputs: list[dict[str, Any]] = body["inputs"]
        if len(inputs) > self.max_predict_inputs:
            return _problem(413, f"{len(inputs)} inputs in one request; the limit is {self.max_predict_inputs}")
        task = body["task"]
        if self.labels is not None and task not in self.labels:
            return _problem(404, f"task '{task}' does not exist")
        label = self.labels[task][0] if self.labels is not None else "label"
        out = []
        for item in inputs:
            pid = str(item.get("id") or f"served-{next(self._ids)}")
            served = {"id": pid, "label": label, "confidence": 1.0, "probabilities": {label: 1.0}}
            served["model_version"] = "fake-1"
            out.append(served)
            if pid not in self.predictions:
                self.predictions[pid] = {"task": task, "text": item.get("text"), **served, "feedback": []}
                self._order.append(pid)
        return _json(200, {"predictions": out})

    def _list_predictions(self, params: dict[str, str]) -> httpx.Response:
        rows = [self.predictions[i] for i in reversed(self._order)]
        if "task" in params:
            rows = [r for r in rows if r.get("task") == params["task"]]
        if "has_feedback" in params:
            wanted = params["has_feedback"] == "true"
            rows = [r for r in rows if bool(r["feedback"]) == wanted]
        return _json(200, _page(rows, params, default_limit=100))

    def _review(self, params: dict[str, str]) -> httpx.Response:
        if "task" not in params:
            return _problem(422, "task is required", errors=[{"loc": ["query", "task"], "msg": "field required"}])
        kind = params.get("kind", "label_issue")
        rows = [r for r in self.review_items if r.get("kind", kind) == kind]
        if self.review_page_size is None:
            return _json(200, {"task": params["task"], "kind": kind, "items": rows})
        return _json(200, {"task": params["task"], "kind": kind, **_page(rows, params, self.review_page_size)})


_FEEDBACK_FIELDS = ("id", "prediction_id", "label", "source")


def _content(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "feedback"}


def _page(rows: list[dict[str, Any]], params: Mapping[str, str], default_limit: int) -> dict[str, Any]:
    start = int(params.get("cursor", "0"))
    limit = int(params.get("limit", default_limit))
    end = start + limit
    return {"items": rows[start:end], "next_cursor": str(end) if end < len(rows) else None}


def _json(status: int, body: Any) -> httpx.Response:
    return httpx.Response(status, json=body)


def _problem(
    status: int, detail: str, *, errors: list[dict[str, Any]] | None = None, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status}
    body["detail"] = detail
    if errors is not None:
        body["errors"] = errors
    content = json.dumps(body).encode()
    return httpx.Response(status, content=content, headers={"Content-Type": PROBLEM, **(headers or {})})
