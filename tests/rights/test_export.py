"""Export: streamed JSON Lines and Parquet, read in keyset chunks; what is exported, re-ingested into a new tenant,
gives the same counts; a tenant key exports only its own."""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import Any

import pyarrow.parquet as pq
from flask.testing import FlaskClient
from sqlalchemy import select

from flywheel.domain.export import export_rows, parquet_stream
from flywheel.models.records import Task, Tenant

from support import LABELS, World, prediction


def seed(client: FlaskClient, world: World, key: str, prefix: str, n: int) -> None:
    items = [
        prediction(f"{prefix}-{i}", LABELS[i % 4], text=f"{prefix} text {i}", metadata={"user_id": f"u-{i % 3}"})
        for i in range(n)
    ]
    assert client.post("/v1/predictions", json={"predictions": items}, headers=world.auth(key)).status_code == 201
    feedback = [
        {
            "id": f"fb-{prefix}-{i}-{j}",
            "prediction_id": f"{prefix}-{i}",
            "label": LABELS[(i + j) % 4],
            "source": "agent" if j else "end_user",
            "source_id": f"s-{j}",
        }
        for i in range(0, n, 2)
        for j in range(1 + i % 3)
    ]
    assert client.post("/v1/feedback", json={"feedback": feedback}, headers=world.auth(key)).status_code == 201


def summary(client: FlaskClient, world: World, key: str) -> tuple[int, int, Counter[str | None]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        url = "/v1/predictions?task=intent&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=world.auth(key)).get_json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return (
        len(items),
        sum(len(p["feedback"]) for p in items),
        Counter(p["effective_label"] for p in items),
    )


def test_the_jsonl_export_streams_and_round_trips_into_a_new_tenant(client: FlaskClient, world: World) -> None:
    seed(client, world, world.acme_rw, "a", 23)
    seed(client, world, world.globex_rw, "g", 5)
    answer = client.get("/v1/export?task=intent&format=jsonl", headers=world.auth(world.acme_read))
    assert answer.status_code == 200 and answer.is_streamed
    assert answer.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in answer.get_data().splitlines()]
    assert len(lines) == 23 and all(r["id"].startswith("a-") for r in lines)  # acme's only
    assert set(lines[0]) >= {"id", "text", "label", "confidence", "created_at", "feedback", "effective_label"}

    client.post("/v1/tenants", json={"slug": "initech", "name": "Initech"}, headers=world.auth(world.admin))
    key = world.key("initech", ["ingest", "read"])
    predictions = [
        {
            k: r[k]
            for k in ("id", "text", "label", "confidence", "probabilities", "model_version", "created_at", "metadata")
        }
        | {"task": "intent"}
        for r in lines
    ]
    feedback = [
        {
            "id": f["id"],
            "prediction_id": r["id"],
            "label": f["label"],
            "source": f["source"],
            "source_id": f["source_id"],
            "created_at": f["created_at"],
        }
        for r in lines
        for f in r["feedback"]
    ]
    assert client.post("/v1/predictions", json={"predictions": predictions}, headers=world.auth(key)).status_code == 201
    assert client.post("/v1/feedback", json={"feedback": feedback}, headers=world.auth(key)).status_code == 201

    original = summary(client, world, world.acme_rw)
    assert original[1] > 0 and len(original[2]) > 2
    assert summary(client, world, key) == original


def test_the_parquet_export_has_the_same_rows_in_row_groups(client: FlaskClient, world: World) -> None:
    seed(client, world, world.acme_rw, "a", 11)
    jsonl = client.get("/v1/export?task=intent", headers=world.auth(world.acme_rw))
    rows = [json.loads(line) for line in jsonl.get_data().splitlines()]
    answer = client.get("/v1/export?task=intent&format=parquet", headers=world.auth(world.acme_rw))
    assert answer.status_code == 200 and answer.mimetype == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(answer.get_data()))
    assert table.num_rows == 11
    for r, p in zip(rows, table.to_pylist(), strict=True):
        assert (p["id"], p["text"], p["label"], p["effective_label"]) == (
            r["id"],
            r["text"],
            r["label"],
            r["effective_label"],
        )
        assert json.loads(p["metadata"]) == r["metadata"] and [f["id"] for f in p["feedback"]] == [
            f["id"] for f in r["feedback"]
        ]
    # Chunks of 3 rows: four chunks read with the keyset cursor, four row groups written as they came.
    with world.db.session() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
        task_id = session.scalar(select(Task.id))
    assert tenant_id is not None and task_id is not None
    chunks = list(export_rows(world.db, tenant_id, task_id, chunk=3))
    assert [len(c) for c in chunks] == [3, 3, 3, 2]
    parts = list(parquet_stream(iter(chunks)))
    assert len(parts) == 5 and all(parts[:4])  # bytes leave after every row group, the footer last
    assert pq.ParquetFile(io.BytesIO(b"".join(parts))).metadata.num_row_groups == 4


def test_export_is_scoped_and_validated(client: FlaskClient, world: World) -> None:
    seed(client, world, world.globex_rw, "g", 3)
    mine = client.get("/v1/export?task=intent", headers=world.auth(world.acme_read))
    assert mine.status_code == 200 and mine.get_data() == b""
    assert client.get("/v1/export?task=intent&tenant=globex", headers=world.auth(world.acme_read)).status_code == 404
    admin = client.get("/v1/export?task=intent&tenant=globex", headers=world.auth(world.admin))
    assert len(admin.get_data().splitlines()) == 3
    assert client.get("/v1/export?task=nope", headers=world.auth(world.acme_read)).status_code == 404
    assert client.get("/v1/export?task=intent&format=csv", headers=world.auth(world.acme_read)).status_code == 422
    assert client.get("/v1/export", headers=world.auth(world.acme_read)).status_code == 422
    assert client.get("/v1/export?task=intent", headers=world.auth(world.acme_ingest)).status_code == 403
