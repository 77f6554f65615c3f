"""Erasure through the API: every row that referenced an erased prediction goes, nothing else does; the audit keeps
counts and id hashes, never content; a second erasure is a no-op; a tenant erases only its own records."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from flywheel.core.db import Base, Database, utcnow
from flywheel.domain.encoder import text_hash
from flywheel.models.label_quality import EmbeddingCache, LabelQualityResult, LabelQualityRun
from flywheel.models.records import Feedback, Prediction, Task, Tenant
from flywheel.models.rights import Erasure
from flywheel.models.training import ModelTrainingRow, ModelVersion

from support import World, prediction

ZERO = {
    "predictions": 0,
    "feedback": 0,
    "review_decisions": 0,
    "label_quality_results": 0,
    "embeddings": 0,
    "training_rows": 0,
    "models_tainted": 0,
}


def seed(client: FlaskClient, world: World, key: str, ids: list[str], *, user: str | None = None) -> None:
    items = [prediction(pid, text=f"secret text of {pid}", metadata={"user_id": user} if user else None) for pid in ids]
    assert client.post("/v1/predictions", json={"predictions": items}, headers=world.auth(key)).status_code == 201
    feedback = [{"id": f"fb-{pid}", "prediction_id": pid, "label": "card_linking", "source": "end_user"} for pid in ids]
    assert client.post("/v1/feedback", json={"feedback": feedback}, headers=world.auth(key)).status_code == 201


def derive(db: Database, client: FlaskClient, world: World, key: str, pid: str) -> int:
    """A review decision, a label-quality result, a cached embedding and a lineage row of a model, for ``pid``."""
    body = {"decision": "relabel", "label": "exchange_rate", "note": "checked"}
    assert client.post(f"/v1/review/{pid}", json=body, headers=world.auth(key)).status_code == 201
    with db.session() as session:
        row = session.scalar(
            select(Prediction).where(Prediction.client_id == pid, Prediction.tenant_id == tid(db, key, world))
        )
        assert row is not None
        run = LabelQualityRun(tenant_id=row.tenant_id, task_id=row.task_id, status="succeeded")
        model = ModelVersion(
            task_id=row.task_id,
            tenant_id=None,
            version=f"shared-{pid}",
            rung="few_shot",
            status="champion",
            metrics={},
            lineage={"tenants": {}},
            created_at=utcnow(),
        )
        session.add_all([run, model])
        session.flush()
        session.add(
            LabelQualityResult(
                run_id=run.id,
                tenant_id=row.tenant_id,
                task_id=row.task_id,
                prediction_id=row.id,
                kind="labeled",
                given_label="card_linking",
                quality=0.2,
            )
        )
        session.add(EmbeddingCache(encoder_id="test-encoder", text_hash=text_hash(row.text), dim=1, vector=b"\0\0\0\0"))
        session.add(ModelTrainingRow(model_id=model.id, prediction_id=row.id))
        return model.id


def tid(db: Database, key: str, world: World) -> int:
    slug = "globex" if key == world.globex_rw else "acme"
    with db.session() as session:
        value = session.scalar(select(Tenant.id).where(Tenant.slug == slug))
        assert value is not None
        return value


def table_counts(db: Database) -> dict[str, int]:
    with db.engine.connect() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in Base.metadata.sorted_tables
        }


def test_deleting_a_prediction_removes_everything_that_referenced_it_and_nothing_else(
    client: FlaskClient, world: World
) -> None:
    db = world.db
    seed(client, world, world.acme_rw, ["keep-1", "gone-1"])
    seed(client, world, world.globex_rw, ["gone-1"])  # the same client id at another tenant
    derive(db, client, world, world.acme_rw, "keep-1")
    model_id = derive(db, client, world, world.acme_rw, "gone-1")
    before = table_counts(db)

    answer = client.delete("/v1/predictions/gone-1", headers=world.auth(world.acme_rw))

    assert answer.status_code == 200, answer.get_json()
    counts = answer.get_json()
    assert counts == {
        "predictions": 1,
        "feedback": 1,
        "review_decisions": 1,
        "label_quality_results": 1,
        "embeddings": 1,
        "training_rows": 1,
        "models_tainted": 1,
    }
    after = table_counts(db)
    changed = {name: before[name] - after[name] for name in before if before[name] != after[name]}
    # Exactly the erased rows went (feedback: the end user's label and the reviewer's decision); one audit row came.
    assert changed == {
        "predictions": 1,
        "feedback": 2,
        "label_quality_results": 1,
        "embedding_cache": 1,
        "model_training_rows": 1,
        "erasures": -1,
    }
    with db.session() as session:
        left = session.scalars(select(Prediction.client_id).join(Tenant).order_by(Tenant.slug, Prediction.client_id))
        assert list(left) == ["keep-1", "gone-1"]  # acme's keep-1, globex's gone-1
        model = session.get(ModelVersion, model_id)
        assert model is not None and model.tainted and model.tainted_rows == 1
    models = client.get("/v1/models?task=intent", headers=world.auth(world.admin)).get_json()["items"]
    tainted = {m["version"]: (m["tainted"], m["tainted_rows"]) for m in models}
    assert tainted["shared-gone-1"] == (True, 1) and tainted["shared-keep-1"] == (False, 0)
    assert client.get("/v1/predictions/gone-1", headers=world.auth(world.acme_rw)).status_code == 404
    assert client.get("/v1/predictions/gone-1", headers=world.auth(world.globex_rw)).status_code == 200


def test_the_audit_row_holds_counts_and_id_hashes_never_content(client: FlaskClient, world: World) -> None:
    seed(client, world, world.acme_rw, ["req-a", "req-b"], user="u-42")
    assert client.post("/v1/erasure", json={"user_id": "u-42"}, headers=world.auth(world.acme_rw)).status_code == 200
    with world.db.session() as session:
        audit = session.scalars(select(Erasure)).one()
        stored = json.dumps(
            {"counts": audit.counts, "hashes": audit.id_hashes, "by": audit.requested_by, "reason": audit.reason}
        )
    assert audit.reason == "user" and audit.tenant_slug == "acme" and audit.counts["predictions"] == 2
    assert sorted(audit.id_hashes) == sorted(hashlib.sha256(i.encode()).hexdigest() for i in ("req-a", "req-b"))
    for content in ("secret text", "req-a", "req-b", "u-42", "card_linking"):
        assert content not in stored


def test_a_second_erasure_answers_200_with_zero_counts(client: FlaskClient, world: World) -> None:
    seed(client, world, world.acme_rw, ["p-1", "p-2"])
    body = {"prediction_ids": ["p-1", "p-2", "never-existed"]}
    first = client.post("/v1/erasure", json=body, headers=world.auth(world.acme_ingest))
    assert first.status_code == 200 and first.get_json()["predictions"] == 2 and first.get_json()["feedback"] == 2
    again = client.post("/v1/erasure", json=body, headers=world.auth(world.acme_ingest))
    assert again.status_code == 200 and again.get_json() == ZERO
    deleted = client.delete("/v1/predictions/p-1", headers=world.auth(world.acme_ingest))
    assert deleted.status_code == 200 and deleted.get_json() == ZERO


def test_a_tenant_key_erases_only_its_own_records(client: FlaskClient, world: World) -> None:
    seed(client, world, world.globex_rw, ["g-1"], user="u-7")
    as_acme = world.auth(world.acme_rw)
    assert client.delete("/v1/predictions/g-1", headers=as_acme).get_json() == ZERO
    assert client.post("/v1/erasure", json={"prediction_ids": ["g-1"]}, headers=as_acme).get_json() == ZERO
    assert client.post("/v1/erasure", json={"user_id": "u-7"}, headers=as_acme).get_json() == ZERO
    assert client.delete("/v1/predictions/g-1?tenant=globex", headers=as_acme).status_code == 404
    assert client.get("/v1/predictions/g-1", headers=world.auth(world.globex_rw)).status_code == 200
    # An admin names the tenant; a read-only key may not erase.
    assert client.delete("/v1/predictions/g-1", headers=world.auth(world.acme_read)).status_code == 403
    admin = client.delete("/v1/predictions/g-1?tenant=globex", headers=world.auth(world.admin))
    assert admin.status_code == 200 and admin.get_json()["predictions"] == 1


def test_erasure_requests_are_validated(client: FlaskClient, world: World) -> None:
    auth = world.auth(world.acme_rw)
    bad: list[Any] = [
        {},
        {"prediction_ids": ["a"], "user_id": "u"},
        {"prediction_ids": []},
        {"prediction_ids": [f"p-{i}" for i in range(1001)]},
        {"prediction_ids": None},
        {"user_id": ""},
    ]
    for body in bad:
        answer = client.post("/v1/erasure", json=body, headers=auth)
        assert answer.status_code == 422, body
        assert answer.mimetype == "application/problem+json"


def test_user_erasure_matches_metadata_user_id_only(client: FlaskClient, world: World) -> None:
    seed(client, world, world.acme_rw, ["u1-a", "u1-b"], user="u-1")
    seed(client, world, world.acme_rw, ["u2-a"], user="u-2")
    seed(client, world, world.acme_rw, ["nobody"])
    answer = client.post("/v1/erasure", json={"user_id": "u-1"}, headers=world.auth(world.acme_rw))
    assert answer.get_json()["predictions"] == 2
    with world.db.session() as session:
        assert sorted(session.scalars(select(Prediction.client_id))) == ["nobody", "u2-a"]
        assert session.scalar(select(func.count()).select_from(Feedback)) == 2
        assert session.scalar(select(func.count()).select_from(Task)) == 1
    with world.db.engine.connect() as conn:  # nothing of the erased text survives in any table
        for t in Base.metadata.sorted_tables:
            for row in conn.execute(select(t)):
                assert "secret text of u1-" not in str(row), t.name


def test_a_large_erasure_counts_each_tainted_model_once(client: FlaskClient, world: World) -> None:
    ids = [f"big-{i}" for i in range(700)]  # more than one chunk of 500
    items = [prediction(pid) for pid in ids]
    assert (
        client.post("/v1/predictions", json={"predictions": items}, headers=world.auth(world.acme_rw)).status_code
        == 201
    )
    with world.db.session() as session:
        task_id = session.scalar(select(Task.id))
        model = ModelVersion(task_id=task_id, version="shared-1", rung="few_shot", status="champion")
        session.add(model)
        session.flush()
        for pk in session.scalars(select(Prediction.id)):
            session.add(ModelTrainingRow(model_id=model.id, prediction_id=pk))
    answer = client.post("/v1/erasure", json={"prediction_ids": ids}, headers=world.auth(world.acme_rw)).get_json()
    assert (answer["predictions"], answer["training_rows"], answer["models_tainted"]) == (700, 700, 1)
    models = client.get("/v1/models", headers=world.auth(world.admin)).get_json()["items"]
    assert [(m["tainted"], m["tainted_rows"]) for m in models] == [(True, 700)]


def test_user_erasure_survives_odd_metadata_and_matches_numeric_ids(client: FlaskClient, world: World) -> None:
    items = [
        prediction("nul", metadata={"note": "a\u0000b", "user_id": "u-9"}),  # PostgreSQL's ->> fails on this one
        prediction("num", metadata={"user_id": 9}),
        prediction("list", metadata={"user_id": ["u-9"]}),
        prediction("bool", metadata={"user_id": True}),
        prediction("other", metadata={"user_id": "u-10"}),
    ]
    assert (
        client.post("/v1/predictions", json={"predictions": items}, headers=world.auth(world.acme_rw)).status_code
        == 201
    )
    auth = world.auth(world.acme_rw)
    assert client.post("/v1/erasure", json={"user_id": "u-9"}, headers=auth).get_json()["predictions"] == 1
    assert client.post("/v1/erasure", json={"user_id": "9"}, headers=auth).get_json()["predictions"] == 1
    with world.db.session() as session:
        assert sorted(session.scalars(select(Prediction.client_id))) == ["bool", "list", "other"]
