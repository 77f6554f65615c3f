"""The SLA's clean value (flagged, unreviewed labels at their label weight) beside the raw one, and the per-SLA
``agreement`` that decides which one the status and the alerts read; over HTTP, on a real database."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import insert, select

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.feedback.review import record_decision
from flywheel.models.label_quality import LabelQualityResult, LabelQualityRun
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.slas import Alert
from flywheel.monitoring import stats
from flywheel.monitoring.jobs import run_monitoring

from support import World
from support.dashboard import sign_in
from support.monitoring import NOW, add_predictions

RIGHT, WRONG_LABEL, WRONG_PREDICTION = "card_arrival", "card_linking", "lost_or_stolen_card"
WEIGHT = 0.05  # the label weight the pass gave each flagged label
SLA = {"metric": "accuracy", "threshold": 0.8, "window_days": 7, "min_labeled": 100, "warning_margin": 0.02}


def _model_90_right_labels_20_wrong(db: Database) -> dict[str, int]:
    """500 labeled predictions of one true class: the model is right on 90% (450), the labels on 80% (the 100 wrong
    ones never where the model is wrong). Raw agreement: 350/500 = 0.70 for a model 90% right. The pass flagged
    every wrong label (weight 0.05), holdout ones (bucket < 15) and the others alike. Returns client id -> row id."""
    rows = [(WRONG_PREDICTION if i % 10 == 0 else RIGHT, WRONG_LABEL if i % 5 == 1 else RIGHT, 0.9) for i in range(500)]
    add_predictions(db, "acme", rows, prefix="w")
    with db.session() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
        task_id = session.scalar(select(Task.id).where(Task.name == "intent"))
        run = LabelQualityRun(tenant_id=tenant_id, task_id=task_id, status="succeeded", summary={})
        session.add(run)
        session.flush()
        ids = dict(session.execute(select(Prediction.client_id, Prediction.id)).tuples().all())
        session.execute(
            insert(LabelQualityResult),
            [
                {
                    "run_id": run.id,
                    "tenant_id": tenant_id,
                    "task_id": task_id,
                    "prediction_id": ids[f"w-{i}"],
                    "kind": "labeled",
                    "given_label": WRONG_LABEL if i % 5 == 1 else RIGHT,
                    "quality": 0.01 if i % 5 == 1 else 0.9,
                    "is_issue": i % 5 == 1,
                    "train_weight": WEIGHT if i % 5 == 1 else 0.97,  # unflagged ones count 1 whatever their weight
                    "holdout": i % 100 < 15,
                }
                for i in range(500)
            ],
        )
    return ids


def _put(client: FlaskClient, world: World, **terms: object) -> dict:
    r = client.put("/v1/slas/acme/intent", json={**SLA, **terms}, headers=world.auth(world.admin))
    assert r.status_code in (200, 201), r.get_json()
    return r.get_json()


def _evaluate(client: FlaskClient, world: World, settings: Settings) -> dict:
    run_monitoring(world.db, settings, now=NOW, drift=False)
    return client.get("/v1/slas", headers=world.auth(world.acme_read)).get_json()["items"][0]


def test_value_clean_weighs_flagged_unreviewed_labels(client: FlaskClient, world: World, settings: Settings) -> None:
    assert _put(client, world)["agreement"] == "raw"  # raw by default
    ids = _model_90_right_labels_20_wrong(world.db)
    row = _evaluate(client, world, settings)
    assert row["value"] == 350 / 500  # "about 70%" for a model 90% right
    expected = 350 / (400 + 100 * WEIGHT)
    assert abs(row["value_clean"] - expected) < 1e-12
    low, high = stats.wilson_interval(expected * round(400 + 100 * WEIGHT), round(400 + 100 * WEIGHT))
    assert abs(row["ci_low_clean"] - low) < 1e-9 and abs(row["ci_high_clean"] - high) < 1e-9
    assert row["n_labeled"] == 500
    # a reviewer keeps 10 flagged labels: those count in full at once; a verdict on a label since changed (here
    # relabeled by a reviewer to the right one) no longer applies either
    with world.db.session() as session:
        for i in range(1, 51, 5):
            p = session.get(Prediction, ids[f"w-{i}"])
            assert p is not None
            record_decision(session, p, decision="keep", label=None, note=None, reviewer="r")
        p = session.get(Prediction, ids["w-96"])
        assert p is not None
        record_decision(session, p, decision="relabel", label=RIGHT, note=None, reviewer="r")
    row = _evaluate(client, world, settings)
    assert row["value"] == 351 / 500
    assert abs(row["value_clean"] - 351 / (401 + 10 + 89 * WEIGHT)) < 1e-12


def test_the_agreement_decides_the_status_and_the_alerts(client: FlaskClient, world: World, settings: Settings) -> None:
    _put(client, world)
    _model_90_right_labels_20_wrong(world.db)
    raw = _evaluate(client, world, settings)
    assert raw["status"] == "breached" and raw["agreement"] == "raw"  # 0.70, its interval wholly below 0.80
    assert _put(client, world, agreement="clean")["agreement"] == "clean"
    clean = _evaluate(client, world, settings)
    assert clean["status"] == "met" and clean["value"] == raw["value"]  # the clean value, above 0.80 + margin
    history = client.get("/v1/slas/acme/intent/history", headers=world.auth(world.acme_read)).get_json()["items"]
    assert [(h["agreement"], h["status"]) for h in history] == [("clean", "met"), ("raw", "breached")]
    assert history[0]["value_clean"] == clean["value_clean"]
    changes = client.get("/v1/slas/acme/intent/changes", headers=world.auth(world.acme_read)).get_json()["items"]
    assert changes[0]["before"]["agreement"] == "raw" and changes[0]["after"]["agreement"] == "clean"
    with world.db.session() as session:
        alert = session.scalars(select(Alert).order_by(Alert.id.desc())).first()
        assert alert is not None and (alert.from_status, alert.to_status) == ("breached", "met")
        assert alert.payload["agreement"] == "clean" and alert.payload["value_clean"] == clean["value_clean"]
    # the dashboard shows both values and which one the status reads
    sign_in(client, world.acme_read)
    html = client.get("/dashboard/tenants/acme").get_data(as_text=True)
    assert 'data-counts="clean"' in html and 'data-counts="raw"' not in html and 'id="sla-clean"' in html
    overview = client.get("/dashboard/").get_data(as_text=True)
    assert 'data-agreement="clean"' in overview and "clean (counts); raw 70.0%" in overview


def test_the_agreement_is_validated_and_tenant_scoped(client: FlaskClient, world: World, settings: Settings) -> None:
    r = client.put("/v1/slas/acme/intent", json={**SLA, "agreement": "cleanest"}, headers=world.auth(world.admin))
    assert r.status_code == 422 and r.content_type == "application/problem+json"
    assert any(e["loc"][-1] == "agreement" for e in r.get_json()["errors"])
    _put(client, world, agreement="clean")
    _model_90_right_labels_20_wrong(world.db)
    _evaluate(client, world, settings)
    globex = world.auth(world.globex_rw)
    assert client.get("/v1/slas", headers=globex).get_json()["items"] == []
    assert client.get("/v1/slas/acme/intent/history", headers=globex).status_code == 404
    assert client.put("/v1/slas/acme/intent", json={**SLA, "agreement": "raw"}, headers=globex).status_code == 403
    # another tenant's flags never weigh acme's figures, nor acme's globex's
    assert client.put("/v1/slas/globex/intent", json=SLA, headers=world.auth(world.admin)).status_code == 201
    add_predictions(world.db, "globex", [(RIGHT, RIGHT, 0.9)] * 150, prefix="g")
    run_monitoring(world.db, settings, now=NOW, drift=False)
    mine = client.get("/v1/slas", headers=globex).get_json()["items"][0]
    assert mine["tenant"] == "globex" and mine["value"] == mine["value_clean"] == 1.0
