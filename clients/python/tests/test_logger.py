"""BackgroundLogger: batching, retries with backoff, the bounded buffer, ordering, flush and close."""

from __future__ import annotations

import atexit
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from flywheel_client import BackgroundLogger, Client, FlywheelError
from flywheel_client.testing import FakeServer, RecordingSleep


def pred(i: int, label: str = "card_arrival") -> dict[str, Any]:
    return {"id": f"p-{i}", "task": "intent", "text": f"text {i}", "label": label, "confidence": 0.9}


def fb(i: int, prediction: int | None = None) -> dict[str, Any]:
    pid = f"p-{i if prediction is None else prediction}"
    return {"id": f"f-{i}", "prediction_id": pid, "label": "card_linking", "source": "end_user", "source_id": "u-1"}


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


class UpperBound(random.Random):
    """Jitter that always picks the top of the range, to see the exponential caps."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def make(client: Client, sleeps: RecordingSleep) -> Iterator[Callable[..., BackgroundLogger]]:
    made: list[BackgroundLogger] = []

    def factory(**settings: Any) -> BackgroundLogger:
        settings.setdefault("flush_interval", 60.0)
        settings.setdefault("register_atexit", False)
        settings.setdefault("sleep", sleeps)
        logger = client.logger(**settings)
        made.append(logger)
        return logger

    yield factory
    for logger in made:
        logger.close(timeout=0.2)


def sizes(server: FakeServer, path: str = "/v1/predictions") -> list[int]:
    return [len(r.items) for r in server.posts(path)]


def test_batches_by_size(server: FakeServer, make: Callable[..., BackgroundLogger]) -> None:
    logger = make(max_batch_items=10)
    for i in range(25):
        assert logger.log_prediction(pred(i)) is True
    wait_for(lambda: logger.sent == 20)
    time.sleep(0.05)
    assert sizes(server) == [10, 10]  # the last 5 wait for the interval (60 s) or a flush
    assert logger.flush(timeout=5)
    assert sizes(server) == [10, 10, 5] and logger.sent == 25 and logger.pending == 0


def test_batches_by_size_in_bytes(server: FakeServer, make: Callable[..., BackgroundLogger]) -> None:
    logger = make(max_batch_bytes=1000)
    for i in range(10):
        logger.log_prediction(pred(i) | {"text": "x" * 300})
    assert logger.flush(timeout=5)
    assert sum(sizes(server)) == 10 and max(sizes(server)) <= 3


def test_batches_by_time(server: FakeServer, make: Callable[..., BackgroundLogger]) -> None:
    logger = make(flush_interval=0.05)
    started = time.monotonic()
    for i in range(3):
        logger.log_prediction(pred(i))
    wait_for(lambda: logger.sent == 3)
    assert time.monotonic() - started >= 0.04
    assert sizes(server) == [3]


def test_nothing_is_sent_before_the_interval(server: FakeServer, make: Callable[..., BackgroundLogger]) -> None:
    logger = make(flush_interval=60)
    logger.log_prediction(pred(1))
    time.sleep(0.1)
    assert server.posts("/v1/predictions") == [] and logger.pending == 1


def test_retries_503_and_429_honouring_retry_after(
    server: FakeServer, make: Callable[..., BackgroundLogger], sleeps: RecordingSleep
) -> None:
    logger = make(backoff_base=0.01, backoff_max=0.02)
    server.fail(503, retry_after=3)
    server.fail(429, retry_after=7)
    server.fail(500)
    for i in range(5):
        logger.log_prediction(pred(i))
    assert logger.flush(timeout=5)
    assert logger.retries == 3 and logger.sent == 5 and logger.duplicates == 0 and logger.rejected == 0
    assert sleeps.delays[0] == 3 and sleeps.delays[1] == 7 and 0 <= sleeps.delays[2] <= 0.02
    assert [r.status for r in server.requests] == [503, 429, 500, 201]
    assert len(server.predictions) == 5


def test_retries_connection_errors_with_exponential_backoff(
    server: FakeServer, make: Callable[..., BackgroundLogger], sleeps: RecordingSleep
) -> None:
    logger = make(backoff_base=0.5, backoff_max=4.0, rng=UpperBound())
    server.down = True
    logger.log_prediction(pred(1))
    logger.flush(timeout=0)
    wait_for(lambda: logger.retries >= 6)
    server.down = False
    assert logger.flush(timeout=5)
    assert sleeps.delays[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert logger.sent == 1 and logger.dropped == 0


def test_backoff_is_full_jitter(client: Client) -> None:
    logger = BackgroundLogger(client, backoff_base=1.0, backoff_max=8.0, rng=random.Random(7), register_atexit=False)
    try:
        for retry in range(6):
            cap = min(8.0, 2.0**retry)
            draws = [logger.backoff(retry) for _ in range(200)]
            assert all(0 <= d <= cap for d in draws)
            assert min(draws) < cap * 0.1 and max(draws) > cap * 0.9  # spread over the whole range
        assert logger.backoff(3, retry_after=30) == 30
        assert logger.backoff(10_000) <= 8.0
    finally:
        logger.close()


def test_a_replay_after_a_lost_answer_counts_as_duplicates(server: FakeServer, sleeps: RecordingSleep) -> None:
    lost: list[httpx.Request] = []

    def answer_lost_once(request: httpx.Request) -> httpx.Response:
        response = server.handle(request)
        if not lost:
            lost.append(request)
            raise httpx.ReadError("connection reset after the server stored the batch", request=request)
        return response

    with Client("http://t", "fw_test_key", transport=httpx.MockTransport(answer_lost_once)) as c:
        logger = c.logger(flush_interval=60, register_atexit=False, sleep=sleeps)
        for i in range(4):
            logger.log_prediction(pred(i))
        assert logger.flush(timeout=5)
        assert (logger.sent, logger.duplicates, logger.retries) == (4, 4, 1)
    assert len(server.predictions) == 4


def test_a_422_is_not_retried_and_only_the_bad_items_are_rejected(
    server: FakeServer, make: Callable[..., BackgroundLogger]
) -> None:
    refused: list[tuple[str, list[dict[str, Any]], FlywheelError]] = []
    logger = make(on_rejected=lambda kind, items, error: refused.append((kind, items, error)))
    for i in range(5):
        logger.log_prediction(pred(i, label="nope" if i == 2 else "card_arrival"))
    assert logger.flush(timeout=5)
    assert (logger.sent, logger.rejected, logger.retries) == (4, 1, 0)
    assert sizes(server) == [5, 4]  # the batch again without the bad item
    assert [r.status for r in server.requests] == [422, 201]
    kind, items, error = refused[0]
    assert kind == "predictions" and items == [pred(2, label="nope")] and error.status == 422
    assert sorted(server.predictions) == ["p-0", "p-1", "p-3", "p-4"]


def test_other_4xx_reject_the_batch_without_retrying(
    client: Client, server: FakeServer, sleeps: RecordingSleep
) -> None:
    with Client("http://t", "wrong-key", transport=server.transport) as bad:
        logger = bad.logger(flush_interval=60, register_atexit=False, sleep=sleeps)
        for i in range(3):
            logger.log_prediction(pred(i))
        assert logger.flush(timeout=5)
        assert (logger.sent, logger.rejected, logger.retries, logger.dropped) == (0, 3, 0, 0)
        assert [r.status for r in server.requests] == [401]


def test_a_409_rejects_only_the_changed_ids(
    server: FakeServer, client: Client, make: Callable[..., BackgroundLogger]
) -> None:
    client.log_predictions([pred(1)])
    logger = make()
    logger.log_prediction(pred(1) | {"text": "changed"})
    for i in range(2, 5):
        logger.log_prediction(pred(i))
    assert logger.flush(timeout=5)
    assert (logger.sent, logger.rejected) == (3, 1)
    assert server.predictions["p-1"]["text"] == "text 1"


def test_a_413_splits_the_batch(make: Callable[..., BackgroundLogger], server: FakeServer) -> None:
    server.max_batch_items = 4
    logger = make(max_batch_items=10)
    for i in range(10):
        logger.log_prediction(pred(i))
    assert logger.flush(timeout=5)
    assert (logger.sent, logger.rejected) == (10, 0) and len(server.predictions) == 10
    assert [(len(r.items), r.status) for r in server.requests] == [
        (10, 413),
        (5, 413),
        (2, 201),
        (3, 201),
        (5, 413),
        (2, 201),
        (3, 201),
    ]


def test_gives_up_after_max_attempts(server: FakeServer, make: Callable[..., BackgroundLogger]) -> None:
    server.down = True
    logger = make(max_attempts=3)
    logger.log_prediction(pred(1))
    assert logger.flush(timeout=5)  # resolved: given up
    assert (logger.dropped, logger.retries, logger.sent) == (1, 2, 0)


def test_the_buffer_is_bounded_and_drops_are_counted(server: FakeServer, make: Callable[..., BackgroundLogger]) -> None:
    server.gate = threading.Event()  # the first request hangs until the gate opens
    logger = make(max_buffer=50, max_batch_items=10)
    started = time.monotonic()
    accepted = [logger.log_prediction(pred(i)) for i in range(100)]
    assert time.monotonic() - started < 1.0  # never waits on the network
    assert accepted == [True] * 50 + [False] * 50
    assert logger.dropped == 50 and logger.pending == 50
    server.gate.set()
    assert logger.flush(timeout=5)
    assert logger.sent == 50 and sorted(server.predictions) == sorted(f"p-{i}" for i in range(50))
    assert logger.log_prediction(pred(100)) is True  # room again


def test_feedback_is_sent_after_its_prediction(server: FakeServer, make: Callable[..., BackgroundLogger]) -> None:
    logger = make()
    for i in range(20):
        logger.log_prediction(pred(i))
        logger.log_feedback(fb(i))
    assert logger.flush(timeout=5)
    assert (logger.sent, logger.rejected) == (40, 0)
    assert [(r.path, len(r.items)) for r in server.posts("/v1/predictions") + server.posts("/v1/feedback")] == [
        ("/v1/predictions", 20),
        ("/v1/feedback", 20),
    ]
    assert all(len(p["feedback"]) == 1 for p in server.predictions.values())


def test_feedback_waits_while_its_prediction_is_retried(
    server: FakeServer, make: Callable[..., BackgroundLogger]
) -> None:
    server.fail(503, times=3, paths=["/v1/predictions"])
    logger = make(max_batch_items=3)
    for i in range(9):
        logger.log_prediction(pred(i))
        logger.log_feedback(fb(i))
    assert logger.flush(timeout=5)
    assert (logger.sent, logger.rejected, logger.retries) == (18, 0, 3)
    answered = [r for r in server.requests if r.status in (200, 201)]
    sent_predictions: set[str] = set()
    for r in answered:  # every feedback request names only predictions already stored
        if r.path == "/v1/predictions":
            sent_predictions.update(item["id"] for item in r.items)
        else:
            assert {item["prediction_id"] for item in r.items} <= sent_predictions


def test_feedback_logged_before_a_later_prediction_is_not_held_back(
    server: FakeServer, client: Client, make: Callable[..., BackgroundLogger]
) -> None:
    client.log_predictions([pred(0)])
    logger = make()
    logger.log_feedback(fb(0))
    logger.log_prediction(pred(1))
    logger.log_feedback(fb(1))
    assert logger.flush(timeout=5)
    assert [(r.path, [i["id"] for i in r.items]) for r in server.requests if r.status == 201][1:] == [
        ("/v1/feedback", ["f-0"]),
        ("/v1/predictions", ["p-1"]),
        ("/v1/feedback", ["f-1"]),
    ]


def test_feedback_whose_prediction_was_dropped_is_counted_not_raised(
    server: FakeServer, make: Callable[..., BackgroundLogger]
) -> None:
    logger = make()
    logger.log_feedback(fb(1, prediction=999))
    logger.log_feedback(fb(2, prediction=998))
    assert logger.flush(timeout=5)
    assert (logger.rejected, logger.sent, logger.retries) == (2, 0, 0)


def test_an_item_that_is_not_json_is_rejected_in_place(make: Callable[..., BackgroundLogger]) -> None:
    logger = make()
    assert logger.log_prediction(pred(1) | {"metadata": {"x": object()}}) is False
    assert logger.rejected == 1 and logger.pending == 0


def test_flush_times_out_while_the_server_is_down(server: FakeServer, make: Callable[..., BackgroundLogger]) -> None:
    server.down = True
    logger = make()
    logger.log_prediction(pred(1))
    started = time.monotonic()
    assert logger.flush(timeout=0.2) is False
    assert 0.15 < time.monotonic() - started < 2
    assert logger.pending == 1 and logger.retries > 0


def test_close_gives_up_after_its_timeout_and_counts_the_rest_dropped(
    server: FakeServer, make: Callable[..., BackgroundLogger]
) -> None:
    server.down = True
    logger = make()
    for i in range(5):
        logger.log_prediction(pred(i))
    assert logger.close(timeout=0.1) is False
    assert logger.dropped == 5 and logger.pending == 0 and logger.closed
    assert logger.log_prediction(pred(9)) is False and logger.dropped == 6
    assert logger.close() is False  # idempotent


def test_close_delivers_and_unregisters_its_atexit_hook(
    server: FakeServer, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[Callable[[], None]] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(atexit, "unregister", registered.remove)
    logger = client.logger(flush_interval=60)
    assert len(registered) == 1
    for i in range(5):
        logger.log_prediction(pred(i))
    assert logger.close() is True
    assert registered == [] and logger.sent == 5 and len(server.predictions) == 5


def test_the_atexit_hook_flushes(server: FakeServer, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[Callable[[], None]] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    logger = client.logger(flush_interval=60)
    logger.log_prediction(pred(1))
    registered[0]()  # what the interpreter does at exit
    assert logger.closed and "p-1" in server.predictions


def test_counters_add_up(server: FakeServer, make: Callable[..., BackgroundLogger]) -> None:
    server.gate = threading.Event()
    logger = make(max_buffer=8, max_batch_items=4)
    for i in range(10):
        logger.log_prediction(pred(i, label="nope" if i == 1 else "card_arrival"))
    logger.log_prediction({"id": "x", "bad": {1, 2}} | {"y": object()})
    server.gate.set()
    assert logger.flush(timeout=5)
    stats = logger.stats()
    assert stats == {"sent": 7, "duplicates": 0, "rejected": 2, "dropped": 2, "retries": 0, "pending": 0}
    assert "BackgroundLogger(" in repr(logger)


def test_settings_are_checked(client: Client) -> None:
    for bad in ({"max_batch_items": 0}, {"max_buffer": 0}, {"flush_interval": -1}, {"max_attempts": 0}):
        with pytest.raises(ValueError):
            client.logger(register_atexit=False, **bad)  # type: ignore[arg-type]
