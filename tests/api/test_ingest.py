"""Ingestion through real HTTP: idempotency, atomicity, concurrency, validation, limits, feedback and reads."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from flywheel.domain.ingest import TaskCatalog, ingest_predictions
from flywheel.domain.schemas import PredictionIn
from flywheel.models.records import Feedback, Prediction, Tenant

from support import World, prediction


def count(world: World, model: type = Prediction) -> int:
    with world.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def post(client, world: World, items: Any, key: str | None = None, path: str = "/v1/predictions"):
    body = items if isinstance(items, dict) else {"predictions": items}
    return client.post(path, json=body, headers=world.auth(key or world.acme_rw))


def fb(fid: str, pid: str, label: str = "card_arrival", **extra: Any) -> dict[str, Any]:
    item = {"id": fid, "prediction_id": pid, "label": label, "source": "end_user", "source_id": "u1"}
    item.update(extra)
    return item


def test_batch_is_stored_and_a_replay_stores_nothing_new(client, world: World) -> None:
    batch = [prediction(f"p{i}") for i in range(50)]
    r = post(client, world, batch)
    assert (r.status_code, r.json) == (201, {"accepted": 50, "duplicates": 0})
    r = post(client, world, batch)
    assert (r.status_code, r.json) == (200, {"accepted": 0, "duplicates": 50})
    r = post(client, world, [*batch[:3], prediction("p-new")])
    assert (r.status_code, r.json) == (201, {"accepted": 1, "duplicates": 3})
    assert count(world) == 51


def test_single_object_body_is_accepted_replayed_and_refused_when_changed(client, world: World) -> None:
    r = post(client, world, prediction("solo"))
    assert (r.status_code, r.json) == (201, {"accepted": 1, "duplicates": 0})
    r = post(client, world, prediction("solo"))
    assert (r.status_code, r.json) == (200, {"accepted": 0, "duplicates": 1})
    assert post(client, world, prediction("solo", text="changed text")).status_code == 409
    assert count(world) == 1


def test_a_single_item_joins_an_open_transaction_and_is_its_own_otherwise(world: World) -> None:
    """One row is atomic by itself: with no transaction open it needs no BEGIN or COMMIT; inside one, it joins it."""
    db = world.db
    with db.session() as session:
        acme = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
    tasks = TaskCatalog()
    with db.engine.connect() as connection:
        tasks.lookup(connection, {"intent"})
        connection.rollback()
        ingest_predictions(connection, acme, [PredictionIn.model_validate(prediction("own"))], tasks=tasks)
        assert not connection.in_transaction()  # its own transaction, already committed
        connection.begin()
        ingest_predictions(connection, acme, [PredictionIn.model_validate(prediction("joined"))], tasks=tasks)
        connection.rollback()
    with db.session() as session:
        assert session.scalars(select(Prediction.client_id)).all() == ["own"]


def test_concurrent_single_posts_of_one_id_store_it_once(app: Flask, world: World) -> None:
    results: list[int] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        client = app.test_client()
        barrier.wait()
        results.append(post(client, world, prediction("race")).status_code)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * 5 + [201]
    assert count(world) == 1


def test_same_id_with_other_content_is_409_and_stores_nothing(client, world: World) -> None:
    assert post(client, world, [prediction("p1")]).status_code == 201
    r = post(client, world, [prediction("p2"), prediction("p1", text="changed text")])
    assert r.status_code == 409
    assert r.content_type == "application/problem+json"
    assert "p1" in r.json["detail"]
    assert count(world) == 1


def test_one_bad_item_rejects_the_whole_batch_and_lists_every_bad_index(client, world: World) -> None:
    batch = [prediction("a"), prediction("b", label="cardarrival"), prediction("c"), prediction("d", confidence=1.5)]
    r = post(client, world, batch)
    assert r.status_code == 422
    assert r.content_type == "application/problem+json"
    locs = [e["loc"] for e in r.json["errors"]]
    assert ["predictions", 1, "label"] in locs
    assert ["predictions", 3, "confidence"] in locs
    assert r.json["detail"].startswith("2 of 4") or "2 problem" in r.json["detail"]
    assert count(world) == 0


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"id": "has space"}, "id"),
        ({"id": "x" * 129}, "id"),
        ({"id": ""}, "id"),
        ({"task": "no-such-task"}, "task"),
        ({"text": ""}, "text"),
        ({"label": "not_a_label"}, "label"),
        ({"confidence": -0.1}, "confidence"),
        ({"confidence": 1.01}, "confidence"),
        ({"confidence": 0.5}, "confidence"),  # not equal to probabilities[label]
        ({"probabilities": {"card_arrival": 0.7, "nope": 0.3}}, "probabilities"),
        ({"probabilities": {"card_arrival": 0.7, "card_linking": 0.2}}, "probabilities"),  # sums to 0.9
        ({"probabilities": {"card_arrival": 0.7, "card_linking": 1.3}}, "probabilities"),  # out of [0, 1]
        ({"confidence": 0.2, "probabilities": {"card_arrival": 0.2, "card_linking": 0.8}}, "probabilities"),
        ({"created_at": "2026-11-27T01:00:00"}, "created_at"),  # no offset: not RFC 3339
        ({"created_at": "yesterday"}, "created_at"),
        ({"in_sample": "yes"}, "in_sample"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_each_validation_rule_reports_its_loc(client, world: World, change: dict, loc: str) -> None:
    r = post(client, world, [prediction("ok"), prediction("bad", **change)])
    assert r.status_code == 422, r.json
    assert any(e["loc"][:3] == ["predictions", 1, loc] for e in r.json["errors"]), r.json["errors"]
    assert all(e["loc"][1] == 1 for e in r.json["errors"])
    assert count(world) == 0


def test_missing_required_fields_are_each_reported(client, world: World) -> None:
    r = post(client, world, [{"id": "x"}])
    assert r.status_code == 422
    locs = {tuple(e["loc"]) for e in r.json["errors"]}
    assert {("predictions", 0, f) for f in ("task", "text", "label", "confidence")} <= locs


def test_optional_fields_may_be_left_out(client, world: World) -> None:
    r = post(client, world, [{"id": "m", "task": "intent", "text": "hi", "label": "card_arrival", "confidence": 0.4}])
    assert r.status_code == 201
    got = client.get("/v1/predictions/m", headers=world.auth(world.acme_rw)).json
    assert got["probabilities"] is None and got["metadata"] is None and got["created_at"]
    assert got["in_sample"] is False
    # a replay without created_at is still a replay, not a conflict
    r = post(client, world, [{"id": "m", "task": "intent", "text": "hi", "label": "card_arrival", "confidence": 0.4}])
    assert (r.status_code, r.json["duplicates"]) == (200, 1)


def test_in_sample_marks_what_the_logging_model_trained_on_and_is_part_of_the_content(client, world: World) -> None:
    assert post(client, world, [prediction("seen", in_sample=True), prediction("unseen")]).status_code == 201
    headers = world.auth(world.acme_rw)
    assert client.get("/v1/predictions/seen", headers=headers).json["in_sample"] is True
    assert client.get("/v1/predictions/unseen", headers=headers).json["in_sample"] is False
    assert post(client, world, [prediction("seen", in_sample=True)]).json == {"accepted": 0, "duplicates": 1}
    assert post(client, world, [prediction("seen")]).status_code == 409  # the same id, other content


def test_repeated_id_inside_one_batch(client, world: World) -> None:
    r = post(client, world, [prediction("dup"), prediction("dup")])
    assert (r.status_code, r.json) == (201, {"accepted": 1, "duplicates": 1})
    r = post(client, world, [prediction("dup2"), prediction("dup2", text="other")])
    assert r.status_code == 422
    assert r.json["errors"][0]["loc"] == ["predictions", 1, "id"]


def test_limits_answer_413(client, world: World, app: Flask) -> None:
    r = post(client, world, [prediction(f"p{i}") for i in range(1001)])
    assert r.status_code == 413
    assert r.content_type == "application/problem+json"
    big = prediction("big", text="x" * 100_000)
    r = post(client, world, [dict(big, id=f"b{i}") for i in range(60)])  # about 6 MB
    assert r.status_code == 413
    assert count(world) == 0


def test_malformed_json_is_400_problem(client, world: World) -> None:
    r = client.post(
        "/v1/predictions", data=b'{"predictions": [', headers=world.auth(world.acme_rw), content_type="application/json"
    )
    assert r.status_code == 400
    assert r.content_type == "application/problem+json"
    assert r.json["status"] == 400 and "JSON" in r.json["detail"]
    r = client.post("/v1/predictions", data=b"", headers=world.auth(world.acme_rw), content_type="application/json")
    assert r.status_code == 400


def test_concurrent_posts_of_the_same_ids_leave_one_row_each(app: Flask, world: World) -> None:
    batch = {"predictions": [prediction(f"c{i}") for i in range(200)]}
    results: list[tuple[int, dict]] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        client = app.test_client()
        barrier.wait()
        r = client.post("/v1/predictions", json=batch, headers=world.auth(world.acme_rw))
        results.append((r.status_code, r.json))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status in (200, 201) for status, _ in results), results
    assert sum(body["accepted"] for _, body in results) == 200
    assert sum(body["duplicates"] for _, body in results) == 5 * 200
    assert count(world) == 200


def test_routing_errors_are_problem_json(client, world: World) -> None:
    r = client.get("/v1/nowhere", headers=world.auth(world.acme_rw))
    assert (r.status_code, r.content_type) == (404, "application/problem+json")
    r = client.delete("/v1/predictions", headers=world.auth(world.acme_rw))
    assert (r.status_code, r.content_type) == (405, "application/problem+json")
    assert "POST" in r.headers["Allow"]


def test_feedback_is_kept_and_derives_the_effective_label(client, world: World) -> None:
    post(client, world, [prediction("p1"), prediction("p2")])
    r = post(
        client,
        world,
        {"feedback": [fb("f1", "p1", "card_linking", created_at="2026-11-28T09:00:00Z")]},
        path="/v1/feedback",
    )
    assert (r.status_code, r.json) == (201, {"accepted": 1, "duplicates": 0})
    r = post(
        client,
        world,
        {
            "feedback": [
                fb(
                    "f2",
                    "p1",
                    "lost_or_stolen_card",
                    source="reviewer",
                    source_id="cs-1",
                    created_at="2026-11-28T08:00:00Z",
                )
            ]
        },
        path="/v1/feedback",
    )
    assert r.status_code == 201
    got = client.get("/v1/predictions/p1", headers=world.auth(world.acme_read)).json
    assert [f["id"] for f in got["feedback"]] == ["f2", "f1"]  # oldest first
    assert got["effective_label"] == "lost_or_stolen_card"  # a reviewer beats an end user, even when earlier
    # replay and conflict, as for predictions
    r = post(
        client,
        world,
        {"feedback": [fb("f1", "p1", "card_linking", created_at="2026-11-28T09:00:00Z")]},
        path="/v1/feedback",
    )
    assert (r.status_code, r.json) == (200, {"accepted": 0, "duplicates": 1})
    r = post(client, world, {"feedback": [fb("f1", "p1", "card_arrival")]}, path="/v1/feedback")
    assert r.status_code == 409
    assert count(world, Feedback) == 2


def test_feedback_batch_with_unknown_prediction_or_label_is_422_by_index(client, world: World) -> None:
    post(client, world, [prediction("p1")])
    r = post(
        client, world, {"feedback": [fb("f1", "p1"), fb("f2", "missing"), fb("f3", "p1", "nope")]}, path="/v1/feedback"
    )
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json["errors"]]
    assert locs == [["feedback", 1, "prediction_id"], ["feedback", 2, "label"]]
    bad_source = post(client, world, {"feedback": [fb("f4", "p1", source="robot")]}, path="/v1/feedback")
    assert bad_source.json["errors"][0]["loc"] == ["feedback", 0, "source"]
    assert count(world, Feedback) == 0


def test_majority_of_end_users_decides_and_each_person_counts_once(client, world: World) -> None:
    post(client, world, [prediction("p1")])
    items = [
        fb("a1", "p1", "card_linking", source_id="u1", created_at="2026-11-28T01:00:00Z"),
        fb("a2", "p1", "card_linking", source_id="u2", created_at="2026-11-28T02:00:00Z"),
        fb("a3", "p1", "exchange_rate", source_id="u3", created_at="2026-11-28T03:00:00Z"),
        fb("a4", "p1", "exchange_rate", source_id="u3", created_at="2026-11-28T04:00:00Z"),  # same person again
    ]
    assert post(client, world, {"feedback": items}, path="/v1/feedback").status_code == 201
    assert client.get("/v1/predictions/p1", headers=world.auth(world.acme_rw)).json["effective_label"] == "card_linking"


def test_list_is_newest_first_with_cursor_pagination_and_filters(client, world: World) -> None:
    items = [prediction(f"p{i:02d}", created_at=f"2026-11-{10 + i:02d}T00:00:00Z") for i in range(12)]
    post(client, world, items)
    post(client, world, {"feedback": [fb("f", "p03")]}, path="/v1/feedback")
    seen: list[str] = []
    cursor = None
    while True:
        q = "&cursor=" + cursor if cursor else ""
        page = client.get(f"/v1/predictions?task=intent&limit=5{q}", headers=world.auth(world.acme_read)).json
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p{i:02d}" for i in reversed(range(12))]
    r = client.get(
        "/v1/predictions?since=2026-11-15T00:00:00Z&until=2026-11-18T00:00:00Z", headers=world.auth(world.acme_read)
    )
    assert [p["id"] for p in r.json["items"]] == ["p07", "p06", "p05"]
    r = client.get("/v1/predictions?has_feedback=true", headers=world.auth(world.acme_read))
    assert [p["id"] for p in r.json["items"]] == ["p03"]
    assert r.json["items"][0]["feedback"][0]["id"] == "f"
    r = client.get("/v1/predictions?limit=0", headers=world.auth(world.acme_read))
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["query", "limit"]
    r = client.get("/v1/predictions?cursor=garbage", headers=world.auth(world.acme_read))
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["query", "cursor"]
