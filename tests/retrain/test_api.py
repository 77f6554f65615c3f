"""Serving and the registry over HTTP: /v1/predict, /v1/models, promote, rollback, /v1/training-runs, tenancy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from flywheel.app import create_app
from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.domain import champions
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.training import ModelVersion, TrainingRun
from flywheel.retrain import jobs, registry

from support import World
from support.retrain import LABELS, TASK, add_labeled, make_task


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def predict(client: FlaskClient, key: str, inputs: list[dict[str, Any]], **extra: Any) -> Any:
    return client.post("/v1/predict", json={"task": TASK, "inputs": inputs, **extra}, headers=auth(key))


def test_predict_answers_logs_and_its_predictions_accept_feedback(
    client: FlaskClient, world: World, tiny_base: Path
) -> None:
    make_task(world.db, tiny_base)
    r = predict(
        client,
        world.acme_rw,
        [{"id": "q-1", "text": "my card did not arrive", "metadata": {"ch": "chat"}}, {"text": "refund please"}],
    )
    assert r.status_code == 200, r.get_json()
    answers = r.get_json()["predictions"]
    assert answers[0]["id"] == "q-1" and answers[1]["id"].startswith("pred-")
    zero = registry_champion(world.db)
    for a in answers:
        assert a["label"] in LABELS and set(a["probabilities"]) == set(LABELS)
        assert math.isclose(sum(a["probabilities"].values()), 1.0, abs_tol=1e-3)
        assert a["confidence"] == a["probabilities"][a["label"]] == max(a["probabilities"].values())
        assert a["model_version"] == zero.version
    # Logged exactly as if posted: readable, and feedback can refer to it.
    got = client.get("/v1/predictions/q-1", headers=auth(world.acme_rw)).get_json()
    assert (got["label"], got["model_version"], got["metadata"]) == (answers[0]["label"], zero.version, {"ch": "chat"})
    fb = client.post(
        "/v1/feedback",
        json={"feedback": [{"id": "fb-1", "prediction_id": "q-1", "label": "card", "source": "end_user"}]},
        headers=auth(world.acme_rw),
    )
    assert fb.status_code == 201, fb.get_json()
    got = client.get("/v1/predictions/q-1", headers=auth(world.acme_rw)).get_json()
    assert got["effective_label"] == "card" and got["feedback"][0]["label"] == "card"
    # A retry answers from the log (no second row); the same id for another text is a conflict.
    again = predict(client, world.acme_rw, [{"id": "q-1", "text": "my card did not arrive"}])
    assert again.status_code == 200 and again.get_json()["predictions"][0] == {
        k: answers[0][k] for k in ("id", "label", "confidence", "probabilities", "model_version")
    }
    assert predict(client, world.acme_rw, [{"id": "q-1", "text": "something else"}]).status_code == 409
    with world.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 2
    # Another tenant never sees it; limits and errors are problem+json.
    assert client.get("/v1/predictions/q-1", headers=auth(world.globex_rw)).status_code == 404
    too_many = predict(client, world.acme_rw, [{"text": f"t{i}"} for i in range(257)])
    assert too_many.status_code == 413 and too_many.content_type == "application/problem+json"
    assert (
        client.post(
            "/v1/predict", json={"task": "nope", "inputs": [{"text": "x"}]}, headers=auth(world.acme_rw)
        ).status_code
        == 404
    )
    assert predict(client, world.acme_read, [{"text": "x"}]).status_code == 403
    assert predict(client, world.acme_rw, []).status_code == 422
    assert client.post("/v1/predict", json={"task": TASK, "inputs": [{"text": "x"}]}).status_code == 401
    # Admin keys name the tenant they predict for.
    assert predict(client, world.admin, [{"text": "x"}]).status_code == 422
    assert predict(client, world.admin, [{"id": "adm-1", "text": "x"}], tenant="globex").status_code == 200
    assert client.get("/v1/predictions/adm-1", headers=auth(world.globex_rw)).status_code == 200


def registry_champion(db: Database, tenant_id: int | None = None) -> ModelVersion:
    with db.session() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == TASK))
        model = champions.champion_for(session, task_id or 0, tenant_id)
        assert model is not None
        return model


def test_a_promotion_reaches_a_running_app_without_restart(world: World, rs: Settings, tiny_base: Path) -> None:
    make_task(world.db, tiny_base)
    # Two running "web servers" on one database, each with its own engine and model cache.
    web1 = create_app(rs, db=Database(world.db.url)).test_client()
    web2 = create_app(rs, db=Database(world.db.url)).test_client()
    zero = registry_champion(world.db)
    assert (
        predict(web2, world.acme_rw, [{"text": "my card"}]).get_json()["predictions"][0]["model_version"]
        == zero.version
    )

    add_labeled(world.db, "acme", 300, seed=11)  # holdouts of about 100 in all: enough for the paired gate
    add_labeled(world.db, "globex", 100, seed=12)
    with world.db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        run_id = jobs.queue_run(session, task, None, trigger="test").id
    assert jobs.run_training(world.db, rs, run_id) == "succeeded"
    # The run's decision carries the paired comparison with the champion, overall and per tenant (own tenant only).
    decision = web1.get(f"/v1/training-runs/{run_id}", headers=auth(world.admin)).get_json()["decision"]
    paired = decision["paired"]
    assert decision["outcome"] == "promoted" and paired["metric"] == "accuracy"
    assert paired["ci_low"] <= paired["difference"] <= paired["ci_high"] and paired["ci_low"] > -rs.gate_tolerance
    assert set(paired["tenants"]) == {"acme", "globex"}
    assert paired["n"] == sum(t["n"] for t in paired["tenants"].values())
    # Every candidate is recorded with its interval; the one chosen is the one now serving.
    heads = [(c["rung"], c["head"]) for c in decision["candidates"]]
    assert heads == [("few_shot", "few_shot"), ("few_shot", "knn")]
    assert all(c["paired"]["n"] == paired["n"] for c in decision["candidates"])
    chosen = [c for c in decision["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["paired"] == {k: v for k, v in paired.items()}
    seen = web1.get(f"/v1/training-runs/{run_id}", headers=auth(world.globex_rw)).get_json()["decision"]
    assert set(seen["paired"]["tenants"]) == {"globex"} and set(seen["candidates"][0]["paired"]["tenants"]) == {
        "globex"
    }
    trained = registry_champion(world.db)
    assert trained.rung == "few_shot"
    assert (
        predict(web2, world.acme_rw, [{"text": "my card"}]).get_json()["predictions"][0]["model_version"]
        == trained.version
    )

    rb = web1.post(f"/v1/tasks/{TASK}/rollback", json={}, headers=auth(world.admin))
    assert rb.status_code == 200, rb.get_json()
    assert (rb.get_json()["champion"]["version"], rb.get_json()["retired"]["version"]) == (
        zero.version,
        trained.version,
    )
    assert (
        predict(web2, world.acme_rw, [{"text": "my card"}]).get_json()["predictions"][0]["model_version"]
        == zero.version
    )

    pr = web1.post(f"/v1/models/{trained.id}/promote", headers=auth(world.admin))
    assert pr.status_code == 200 and pr.get_json()["status"] == "champion"
    assert (
        predict(web2, world.acme_rw, [{"text": "my card"}]).get_json()["predictions"][0]["model_version"]
        == trained.version
    )
    # A rollback with nothing before the first champion is a conflict.
    assert web1.post(f"/v1/tasks/{TASK}/rollback", headers=auth(world.admin)).status_code == 200
    assert web1.post(f"/v1/tasks/{TASK}/rollback", headers=auth(world.admin)).status_code == 409


def seed_models(db: Database, artifact: Path) -> dict[str, int]:
    """A shared champion and an acme variant, with per-tenant metrics and lineage for both tenants."""
    tenants_metrics = {"acme": {"n": 10.0, "accuracy": 0.9}, "globex": {"n": 12.0, "accuracy": 0.7}}
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        acme = session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        assert task is not None and acme is not None
        shared = ModelVersion(
            task_id=task.id,
            version=registry.version_name(session, task, None),
            rung="few_shot",
            metrics={"holdout": {"overall": {"n": 22.0}, "tenants": tenants_metrics}},
            lineage={"n_train": 100, "tenants": {"acme": 60, "globex": 40}},
        )
        session.add(shared)
        session.flush()
        registry.promote(session, shared.id)
        variant = ModelVersion(
            task_id=task.id,
            tenant_id=acme.id,
            version=registry.version_name(session, task, acme),
            rung="fine_tuned",
            metrics={"holdout": {"overall": {"n": 10.0}, "tenants": {"acme": tenants_metrics["acme"]}}},
            lineage={"n_train": 60, "tenants": {"acme": 60}},
            artifact_path=str(artifact),
        )
        session.add(variant)
        session.flush()
        return {"shared": shared.id, "variant": variant.id}


def test_models_endpoints_are_tenant_scoped(client: FlaskClient, world: World, tiny_base: Path, tmp_path: Path) -> None:
    make_task(world.db, tiny_base)
    ids = seed_models(world.db, tmp_path)
    admin = client.get(f"/v1/models?task={TASK}", headers=auth(world.admin)).get_json()["items"]
    assert {m["id"] for m in admin} == {ids["shared"], ids["variant"], registry_champion(world.db).replaced_id}
    shared = next(m for m in admin if m["id"] == ids["shared"])
    assert shared["status"] == "champion" and shared["tenant"] is None and shared["rung"] == "few_shot"
    assert set(shared["metrics"]["holdout"]["tenants"]) == {"acme", "globex"}

    acme = client.get("/v1/models", headers=auth(world.acme_read)).get_json()["items"]
    assert {m["id"] for m in acme} >= {ids["shared"], ids["variant"]}
    seen = next(m for m in acme if m["id"] == ids["shared"])
    assert set(seen["metrics"]["holdout"]["tenants"]) == {"acme"} and set(seen["lineage"]["tenants"]) == {"acme"}

    globex = client.get("/v1/models", headers=auth(world.globex_rw)).get_json()["items"]
    assert ids["variant"] not in {m["id"] for m in globex}
    assert client.get(f"/v1/models/{ids['variant']}", headers=auth(world.globex_rw)).status_code == 404
    assert client.get(f"/v1/models/{ids['variant']}", headers=auth(world.acme_read)).status_code == 200
    assert client.get("/v1/models?tenant=acme", headers=auth(world.globex_rw)).status_code == 404
    # Promote and rollback are admin-only.
    assert client.post(f"/v1/models/{ids['variant']}/promote", headers=auth(world.acme_rw)).status_code == 403
    assert client.post(f"/v1/tasks/{TASK}/rollback", headers=auth(world.acme_rw)).status_code == 403
    assert client.post("/v1/models/99999/promote", headers=auth(world.admin)).status_code == 404
    missing = client.post(f"/v1/models/{ids['shared']}/promote", headers=auth(world.admin))  # already champion
    assert missing.status_code == 409 and "artifact" in missing.get_json()["detail"]
    pr = client.post(f"/v1/models/{ids['variant']}/promote", headers=auth(world.admin))
    assert pr.status_code == 200 and pr.get_json()["tenant"] == "acme"
    # The variant serves acme only; rolling it back returns acme to the shared model.
    acme_models = client.get("/v1/models?status=champion", headers=auth(world.admin)).get_json()["items"]
    assert {m["id"] for m in acme_models} == {ids["shared"], ids["variant"]}
    rb = client.post(f"/v1/tasks/{TASK}/rollback", json={"tenant": "acme"}, headers=auth(world.admin))
    assert rb.status_code == 200 and rb.get_json()["champion"]["id"] == ids["shared"]


def test_training_runs_are_queued_for_the_scheduler_and_tenant_scoped(
    client: FlaskClient, world: World, tiny_base: Path
) -> None:
    make_task(world.db, tiny_base)
    r = client.post("/v1/training-runs", json={"task": TASK}, headers=auth(world.admin))
    assert r.status_code == 202 and r.get_json()["status"] == "queued"
    shared_id = r.get_json()["id"]
    again = client.post("/v1/training-runs", json={"task": TASK}, headers=auth(world.admin))
    assert again.status_code == 202 and again.get_json()["id"] == shared_id  # one queued run per scope
    acme = client.post("/v1/training-runs", json={"task": TASK, "tenant": "acme"}, headers=auth(world.admin))
    assert acme.status_code == 202 and acme.get_json()["id"] != shared_id and acme.get_json()["tenant"] == "acme"
    acme_id = acme.get_json()["id"]
    # The web worker only queues: nothing ran.
    with world.db.session() as session:
        assert {r.status for r in session.scalars(select(TrainingRun))} == {"queued"}
    assert client.post("/v1/training-runs", json={"task": TASK}, headers=auth(world.acme_rw)).status_code == 403
    assert client.post("/v1/training-runs", json={"task": "nope"}, headers=auth(world.admin)).status_code == 404
    assert (
        client.post("/v1/training-runs", json={"task": TASK, "tenant": "nope"}, headers=auth(world.admin)).status_code
        == 404
    )
    assert client.post("/v1/training-runs", json={"tusk": TASK}, headers=auth(world.admin)).status_code == 422

    got = client.get(f"/v1/training-runs/{shared_id}", headers=auth(world.admin)).get_json()
    assert {"id", "status", "progress", "metrics", "decision", "model_id"} <= set(got)
    assert client.get(f"/v1/training-runs/{acme_id}", headers=auth(world.acme_read)).status_code == 200
    assert client.get(f"/v1/training-runs/{acme_id}", headers=auth(world.globex_rw)).status_code == 404
    assert client.get(f"/v1/training-runs/{shared_id}", headers=auth(world.globex_rw)).status_code == 200
    assert client.get("/v1/training-runs/4242", headers=auth(world.admin)).status_code == 404
    listed = client.get(f"/v1/training-runs?task={TASK}", headers=auth(world.globex_rw)).get_json()["items"]
    assert [x["id"] for x in listed] == [shared_id]
    assert len(client.get("/v1/training-runs", headers=auth(world.admin)).get_json()["items"]) == 2
    assert client.get("/v1/training-runs?tenant=acme", headers=auth(world.globex_rw)).status_code == 404


def test_openapi_documents_the_retraining_endpoints(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    for path in (
        "/v1/predict",
        "/v1/models",
        "/v1/models/{ref}/promote",
        "/v1/tasks/{name}/rollback",
        "/v1/training-runs",
        "/v1/training-runs/{run_id}",
    ):
        assert path in paths, path


def test_creating_a_task_creates_its_zero_shot_champion(client: FlaskClient, world: World) -> None:
    r = client.post("/v1/tasks", json={"name": "fresh", "labels": ["yes", "no"]}, headers=auth(world.admin))
    assert r.status_code == 201, r.get_json()
    items = client.get("/v1/models?task=fresh", headers=auth(world.acme_read)).get_json()["items"]
    assert [(m["rung"], m["status"], m["tenant"], m["version"]) for m in items] == [
        ("zero_shot", "champion", None, "fresh-v1")
    ]
