"""Client: requests, chunking, pagination and the mapping of every failure to FlywheelError."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from flywheel_client import Client, FlywheelConnectionError, FlywheelError, IngestResult
from flywheel_client._encoding import chunks, encode
from flywheel_client._errors import parse_retry_after
from flywheel_client.testing import FakeServer


def pred(i: int, label: str = "card_arrival", text: str | None = None) -> dict[str, Any]:
    return {"id": f"p-{i}", "task": "intent", "text": text or f"text {i}", "label": label, "confidence": 0.9}


def test_requests_carry_the_key_and_json(server: FakeServer, client: Client) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return server.handle(request)

    with Client("http://flywheel.test/", "fw_test_key", transport=httpx.MockTransport(handler)) as c:
        assert c.url == "http://flywheel.test"
        assert c.log_predictions([pred(1)]) == IngestResult(1, 0)
    assert seen[0].headers["Authorization"] == "Bearer fw_test_key"
    assert seen[0].headers["Content-Type"] == "application/json"
    assert seen[0].headers["User-Agent"].startswith("flywheel-client/")


def test_log_predictions_chunks_at_1000_and_counts_duplicates(server: FakeServer, client: Client) -> None:
    items = [pred(i) for i in range(2500)]
    assert client.log_predictions(items) == IngestResult(accepted=2500, duplicates=0)
    assert [len(r.items) for r in server.posts("/v1/predictions")] == [1000, 1000, 500]
    assert client.log_predictions(items[:10]) == IngestResult(accepted=0, duplicates=10)
    assert len(server.predictions) == 2500


def test_chunks_respect_the_body_size() -> None:
    assert list(chunks([10] * 5, max_items=2, max_bytes=1000)) == [(0, 2), (2, 4), (4, 5)]
    assert list(chunks([400, 400, 400], max_items=10, max_bytes=1000)) == [(0, 2), (2, 3)]
    assert list(chunks([5000, 10], max_items=10, max_bytes=1000)) == [(0, 1), (1, 2)]  # too big: alone
    assert list(chunks([], max_items=10, max_bytes=1000)) == []


def test_large_items_are_split_by_size(server: FakeServer, client: Client) -> None:
    big = "x" * 1_000_000
    assert client.log_predictions([pred(i, text=big) for i in range(10)]).accepted == 10
    sizes = [len(r.items) for r in server.posts("/v1/predictions")]
    assert sum(sizes) == 10 and len(sizes) >= 3 and max(sizes) <= 4


def test_a_bad_item_in_a_later_chunk_is_reported_by_its_index_in_the_call(server: FakeServer, client: Client) -> None:
    items = [pred(i) for i in range(1500)]
    items[1234]["label"] = "cardarrival"
    with pytest.raises(FlywheelError) as caught:
        client.log_predictions(items)
    error = caught.value
    assert error.status == 422 and error.title == "Unprocessable Content"
    assert error.errors == [
        {"loc": ["predictions", 1234, "label"], "msg": "'cardarrival' is not a label of task 'intent'"}
    ]
    assert len(server.predictions) == 1000  # the first request was stored; sending all again is safe
    items[1234]["label"] = "card_arrival"
    assert client.log_predictions(items) == IngestResult(accepted=500, duplicates=1000)


def test_log_feedback(server: FakeServer, client: Client) -> None:
    client.log_predictions([pred(1)])
    fb = {"id": "f-1", "prediction_id": "p-1", "label": "card_linking", "source": "end_user", "source_id": "u-1"}
    assert client.log_feedback([fb]) == IngestResult(1, 0)
    assert client.get_prediction("p-1")["feedback"][0]["label"] == "card_linking"
    with pytest.raises(FlywheelError) as caught:
        client.log_feedback([{**fb, "id": "f-2", "prediction_id": "nope"}])
    assert caught.value.errors[0]["loc"] == ["feedback", 0, "prediction_id"]


def test_predict_accepts_texts_or_items_and_chunks_at_256(server: FakeServer, client: Client) -> None:
    texts: list[str | dict[str, Any]] = [f"text {i}" for i in range(600)]
    texts[3] = {"id": "mine-3", "text": "hello", "metadata": {"channel": "chat"}}
    out = client.predict("intent", texts)
    assert len(out) == 600 and out[3]["id"] == "mine-3"
    assert {"id", "label", "confidence", "probabilities", "model_version"} <= set(out[0])
    assert [len(r.items) for r in server.posts("/v1/predict")] == [256, 256, 88]
    assert server.posts("/v1/predict")[0].items[0] == {"text": "text 0"}
    with pytest.raises(TypeError):
        client.predict("intent", "one string")


def test_iter_predictions_follows_the_cursor(server: FakeServer, client: Client) -> None:
    client.log_predictions([pred(i) for i in range(250)])
    ids = [p["id"] for p in client.iter_predictions("intent", page_size=100)]
    assert ids == [f"p-{i}" for i in reversed(range(250))]  # newest first, each once
    gets = [r for r in server.requests if r.method == "GET"]
    assert [r.params.get("cursor") for r in gets] == [None, "100", "200"]
    assert gets[0].params == {"task": "intent", "limit": "100"}


def test_iter_predictions_query_parameters(server: FakeServer, client: Client) -> None:
    since = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
    list(client.iter_predictions("intent", since=since, until=datetime(2026, 11, 28), has_feedback=False))
    params = server.requests[-1].params
    assert params["since"] == "2026-11-27T01:00:00+00:00"
    assert params["until"] == "2026-11-28T00:00:00+00:00"  # naive: taken as UTC
    assert params["has_feedback"] == "false"


def test_a_cursor_that_repeats_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": [{"id": "x"}], "next_cursor": "same"})

    with Client("http://t", "k", transport=httpx.MockTransport(handler)) as c, pytest.raises(FlywheelError):
        list(c.iter_predictions())


def test_review_queue_yields_one_page_or_follows_the_cursor(server: FakeServer, client: Client) -> None:
    server.review_items = [{"prediction_id": f"p-{i}", "kind": "label_issue", "quality": i / 10} for i in range(5)]
    assert [r["prediction_id"] for r in client.review_queue("intent")] == [f"p-{i}" for i in range(5)]
    assert server.requests[-1].params == {"task": "intent", "kind": "label_issue"}
    server.review_page_size = 2
    assert len(list(client.review_queue("intent", limit=2))) == 5
    assert list(client.review_queue("intent", kind="uncertain")) == []


def test_get_sla_finds_the_row_or_raises_404(server: FakeServer, client: Client) -> None:
    server.slas = [
        {"tenant": "acme", "task": "other", "status": "met"},
        {"tenant": "acme", "task": "intent", "status": "at_risk", "value": 0.88},
    ]
    assert client.get_sla("acme", "intent")["status"] == "at_risk"
    assert server.requests[-1].params == {"tenant": "acme", "limit": "1000"}
    with pytest.raises(FlywheelError) as caught:
        client.get_sla("acme", "missing")
    assert caught.value.status == 404


def test_models_alerts_and_tasks(server: FakeServer, client: Client) -> None:
    server.models = [{"id": 1, "task": "intent", "rung": "zero_shot", "status": "champion"}]
    server.alerts = [{"id": 7, "kind": "sla"}]
    assert client.list_models("intent")[0]["rung"] == "zero_shot"
    assert client.list_models("other") == []
    assert client.list_alerts() == [{"id": 7, "kind": "sla"}]
    assert client.list_tasks()[0]["name"] == "intent"


def test_problem_json_maps_to_flywheel_error(server: FakeServer, client: Client) -> None:
    with pytest.raises(FlywheelError) as caught:
        client.get_prediction("missing")
    error = caught.value
    assert (error.status, error.title, error.type) == (404, "Not Found", "about:blank")
    assert error.detail == "prediction 'missing' does not exist"
    assert error.errors == [] and error.retry_after is None and not error.retryable
    assert str(error) == "404 Not Found: prediction 'missing' does not exist"


def test_retry_after_and_retryable(server: FakeServer, client: Client) -> None:
    server.fail(503, retry_after=5)
    with pytest.raises(FlywheelError) as caught:
        client.list_tasks()
    assert caught.value.status == 503 and caught.value.retry_after == 5.0 and caught.value.retryable


def test_unauthorized(server: FakeServer) -> None:
    with Client("http://t", "wrong", transport=server.transport) as c, pytest.raises(FlywheelError) as caught:
        c.list_tasks()
    assert caught.value.status == 401


def test_an_error_without_problem_json() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    with Client("http://t", "k", transport=httpx.MockTransport(handler)) as c, pytest.raises(FlywheelError) as caught:
        c.list_tasks()
    assert caught.value.status == 502 and caught.value.title == "Bad Gateway"
    assert caught.value.detail == "<html>bad gateway</html>"


def test_a_success_that_is_not_json() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="hello")

    with Client("http://t", "k", transport=httpx.MockTransport(handler)) as c, pytest.raises(FlywheelError) as caught:
        c.list_tasks()
    assert caught.value.status == 200 and caught.value.title == "Invalid response"


def test_connection_failures_raise_the_subclass_with_status_none(server: FakeServer, client: Client) -> None:
    server.down = True
    with pytest.raises(FlywheelConnectionError) as caught:
        client.list_tasks()
    assert isinstance(caught.value, FlywheelError)
    assert caught.value.status is None and caught.value.retryable
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_a_real_refused_connection() -> None:
    with Client("http://127.0.0.1:9", "k", timeout=2) as c, pytest.raises(FlywheelConnectionError):
        c.list_tasks()


def test_errors_pickle() -> None:
    error = FlywheelError(422, "Unprocessable Content", "bad", errors=[{"loc": ["x"], "msg": "y"}], retry_after=1)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.title, copy.detail, copy.errors, copy.retry_after) == (
        422,
        error.title,
        "bad",
        error.errors,
        1,
    )
    conn = pickle.loads(pickle.dumps(FlywheelConnectionError("refused")))
    assert isinstance(conn, FlywheelConnectionError) and conn.status is None and conn.detail == "refused"


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now.timestamp()) == 30.0


def test_request_encodes_datetimes() -> None:
    assert encode({"at": datetime(2026, 1, 1, 12, 0)}) == b'{"at":"2026-01-01T12:00:00+00:00"}'
    with pytest.raises(TypeError):
        encode({"x": object()})


def test_close_closes_the_loggers_it_made(server: FakeServer) -> None:
    c = Client("http://t", "fw_test_key", transport=server.transport)
    logger = c.logger(flush_interval=60, register_atexit=False)
    logger.log_prediction(pred(1))
    c.close()
    assert logger.closed and logger.sent == 1 and "p-1" in server.predictions
    c.close()  # idempotent
