"""SLA endpoints, SQL-aggregated evaluation, drift reports, alerts and tenant scoping, on a real database."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import func, select

from flywheel.cli import Context
from flywheel.core.config import Settings
from flywheel.models.slas import Alert, SlaEvaluation
from flywheel.monitoring import stats
from flywheel.monitoring.cli import monitor
from flywheel.monitoring.jobs import run_monitoring

from support import World
from support.monitoring import NOW, add_predictions, labeled

SLA = {"metric": "accuracy", "threshold": 0.9, "window_days": 7, "min_labeled": 100, "warning_margin": 0.02}


def put_sla(client: FlaskClient, world: World, tenant: str = "acme", **terms: object) -> dict:
    response = client.put(f"/v1/slas/{tenant}/intent", json={**SLA, **terms}, headers=world.auth(world.admin))
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()


def fast(settings: Settings, **changes: object) -> Settings:
    return settings.with_(drift_text_embeddings=False, **changes)


def test_put_sla_validates_scopes_and_keeps_its_history(client: FlaskClient, world: World) -> None:
    admin = world.auth(world.admin)
    created = client.put("/v1/slas/acme/intent", json=SLA, headers=admin)
    assert created.status_code == 201
    body = created.get_json()
    assert body["status"] == "insufficient_data" and body["evaluated_at"] is None and body["version"] == 1
    assert client.put("/v1/slas/acme/intent", json=SLA, headers=admin).status_code == 200  # unchanged
    changed = client.put("/v1/slas/acme/intent", json={**SLA, "threshold": 0.85}, headers=admin)
    assert changed.status_code == 200 and changed.get_json()["version"] == 2
    changes = client.get("/v1/slas/acme/intent/changes", headers=world.auth(world.acme_read)).get_json()["items"]
    assert [c["version"] for c in changes] == [2, 1]
    assert changes[0]["before"]["threshold"] == 0.9 and changes[0]["after"]["threshold"] == 0.85
    assert changes[1]["before"] is None

    bad = client.put("/v1/slas/acme/intent", json={**SLA, "metric": "recall:nope"}, headers=admin)
    assert bad.status_code == 422
    assert bad.headers["Content-Type"].startswith("application/problem+json")
    assert bad.get_json()["errors"][0]["loc"] == ["metric"]
    assert client.put("/v1/slas/acme/intent", json={**SLA, "threshold": 1.5}, headers=admin).status_code == 422
    assert client.put("/v1/slas/acme/nope", json=SLA, headers=admin).status_code == 404
    assert client.put("/v1/slas/nobody/intent", json=SLA, headers=admin).status_code == 404
    assert client.put("/v1/slas/acme/intent", json=SLA, headers=world.auth(world.acme_read)).status_code == 403
    assert client.get("/v1/slas").status_code == 401


@pytest.mark.slow
def test_evaluation_aggregates_in_sql_and_matches_sklearn(
    client: FlaskClient, world: World, settings: Settings
) -> None:
    put_sla(client, world)
    # In the window: 300 labeled (255 right = 0.85), 700 unlabeled, 50 discarded (not labeled, still predictions).
    add_predictions(world.db, "acme", labeled(300, 255, conf=0.95), prefix="in")
    add_predictions(world.db, "acme", [("card_arrival", None, 0.95)] * 700, prefix="unl")
    add_predictions(world.db, "acme", labeled(50, 0), prefix="disc", discarded=True)
    # Outside the window, and another tenant: never counted.
    add_predictions(world.db, "acme", labeled(500, 0), prefix="old", at=NOW - timedelta(days=8))
    add_predictions(world.db, "globex", labeled(500, 0), prefix="gx")

    result = run_monitoring(world.db, fast(settings), now=NOW)
    assert result["evaluated"] == 1 and result["errors"] == []
    row = client.get("/v1/slas", headers=world.auth(world.acme_read)).get_json()["items"][0]
    low, high = stats.wilson_interval(255, 300)
    assert row["value"] == pytest.approx(0.85)
    assert row["ci_low"] == pytest.approx(low) and row["ci_high"] == pytest.approx(high)
    assert row["n_labeled"] == 300 and row["n_predictions"] == 1050
    assert row["coverage"] == pytest.approx(300 / 1050)
    assert row["status"] == "breached"  # upper bound 0.889 < 0.90
    # Overconfident logged confidences (0.95 for 85% right): ECE 0.10, and CBPE corrects the unlabeled estimate.
    assert row["calibration_error"] == pytest.approx(0.10, abs=1e-6)
    assert row["estimated_value"] == pytest.approx(0.85, abs=1e-6)
    # The 500 old rows form the previous window, the drift reference.
    assert row["drift"]["reference"] == "window" and row["drift"]["report_id"] is not None

    history = client.get("/v1/slas/acme/intent/history", headers=world.auth(world.acme_read)).get_json()["items"]
    assert len(history) == 1 and history[0]["status"] == "breached" and history[0]["threshold"] == 0.9


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("macro_f1", None), ("recall:card_linking", 50 / 70), ("precision:card_arrival", 0.8)],
)
def test_other_metrics(client: FlaskClient, world: World, settings: Settings, metric: str, expected: float) -> None:
    put_sla(client, world, metric=metric, min_labeled=10)
    # 100 predicted card_arrival (80 right, 20 truly card_linking) and 50 right card_linking predictions.
    rows = labeled(100, 80) + [("card_linking", "card_linking", 0.8)] * 50
    add_predictions(world.db, "acme", rows)
    run_monitoring(world.db, fast(settings), now=NOW, drift=False)
    row = client.get("/v1/slas", headers=world.auth(world.acme_read)).get_json()["items"][0]
    if expected is None:
        from sklearn.metrics import f1_score

        y_true = [r[1] for r in rows]
        y_pred = [r[0] for r in rows]
        expected = f1_score(y_true, y_pred, average="macro")
    assert row["value"] == pytest.approx(expected)
    assert row["ci_low"] <= row["value"] <= row["ci_high"]
    assert row["estimated_value"] is None and row["estimated_accuracy"] is not None  # never mixed silently


@pytest.mark.slow
def test_tenant_scoping_of_slas_history_alerts_and_reports(
    client: FlaskClient, world: World, settings: Settings
) -> None:
    put_sla(client, world, "acme")
    put_sla(client, world, "globex")
    # Two windows per tenant so drift has a reference; acme's current window moves (long texts, low confidence).
    for tenant in ("acme", "globex"):
        add_predictions(world.db, tenant, labeled(200, 190), prefix="ref", at=NOW - timedelta(days=10))
    add_predictions(world.db, "acme", labeled(200, 150, conf=0.5), prefix="cur", text_length=300)
    add_predictions(world.db, "globex", labeled(200, 190), prefix="cur")
    run_monitoring(world.db, fast(settings), now=NOW)

    acme = client.get("/v1/slas", headers=world.auth(world.acme_read)).get_json()["items"]
    globex = client.get("/v1/slas", headers=world.auth(world.globex_rw)).get_json()["items"]
    everyone = client.get("/v1/slas", headers=world.auth(world.admin)).get_json()["items"]
    assert [r["tenant"] for r in acme] == ["acme"] and [r["tenant"] for r in globex] == ["globex"]
    assert sorted(r["tenant"] for r in everyone) == ["acme", "globex"]
    assert acme[0]["drift"]["status"] == "detected" and globex[0]["drift"]["status"] == "none"
    acme_report = acme[0]["drift"]["report_id"]
    assert acme[0]["drift"]["reference"] == "window"

    page = client.get(f"/v1/reports/{acme_report}", headers=world.auth(world.acme_read))
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "confidence" in page.get_data(as_text=True)
    # Another tenant's report, history and alerts: 404 / empty, exactly like things that do not exist.
    assert client.get(f"/v1/reports/{acme_report}", headers=world.auth(world.globex_rw)).status_code == 404
    assert client.get("/v1/reports/999999", headers=world.auth(world.globex_rw)).status_code == 404
    assert client.get("/v1/slas/acme/intent/history", headers=world.auth(world.globex_rw)).status_code == 404
    assert client.get("/v1/slas?tenant=acme", headers=world.auth(world.globex_rw)).status_code == 404
    acme_alerts = client.get("/v1/alerts", headers=world.auth(world.acme_read)).get_json()["items"]
    globex_alerts = client.get("/v1/alerts", headers=world.auth(world.globex_rw)).get_json()["items"]
    assert {a["tenant"] for a in acme_alerts} == {"acme"}
    assert {(a["kind"], a["to_status"]) for a in acme_alerts} == {("sla_status", "breached"), ("drift", "detected")}
    assert globex_alerts == []  # globex started met with no drift: nothing to tell


def test_alerts_fire_once_per_transition_and_the_job_is_safe_to_rerun(
    client: FlaskClient, world: World, settings: Settings
) -> None:
    put_sla(client, world)
    add_predictions(world.db, "acme", labeled(300, 240), prefix="bad")  # 0.80: breached
    run_monitoring(world.db, fast(settings), now=NOW, drift=False)
    run_monitoring(world.db, fast(settings), now=NOW + timedelta(minutes=5), drift=False)
    with world.db.session() as session:
        assert session.scalar(select(func.count()).select_from(SlaEvaluation)) == 2  # a time series
        assert session.scalar(select(func.count()).select_from(Alert)) == 1  # one transition, one alert
    # Much better data arrives; the window now holds 300 bad + 3000 good rows: 0.98 -> met.
    add_predictions(world.db, "acme", labeled(3000, 3000), prefix="good")
    run_monitoring(world.db, fast(settings), now=NOW + timedelta(minutes=10), drift=False)
    alerts = client.get("/v1/alerts", headers=world.auth(world.acme_read)).get_json()["items"]
    assert [(a["from_status"], a["to_status"]) for a in alerts] == [("breached", "met"), (None, "breached")]
    assert all(a["delivery_status"] == "no_webhook" for a in alerts)
    history = client.get("/v1/slas/acme/intent/history", headers=world.auth(world.acme_read)).get_json()["items"]
    assert [h["status"] for h in history] == ["met", "breached", "breached"]


def test_insufficient_data_below_min_labeled(client: FlaskClient, world: World, settings: Settings) -> None:
    put_sla(client, world, min_labeled=100)
    add_predictions(world.db, "acme", labeled(99, 10))  # terrible, but only 99 labels
    run_monitoring(world.db, fast(settings), now=NOW, drift=False)
    row = client.get("/v1/slas", headers=world.auth(world.acme_read)).get_json()["items"][0]
    assert row["status"] == "insufficient_data" and row["n_labeled"] == 99
    assert client.get("/v1/alerts", headers=world.auth(world.acme_read)).get_json()["items"] == []


def test_cli_monitor_runs_with_a_progress_bar(client: FlaskClient, world: World, settings: Settings) -> None:
    put_sla(client, world)
    add_predictions(world.db, "acme", labeled(300, 290))
    runner = CliRunner()
    ctx = Context(fast(settings))
    result = runner.invoke(monitor, ["--tenant", "acme", "--no-drift"], obj=ctx, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert '"evaluated": 1' in result.stdout
    assert "monitoring" in result.stderr  # the tqdm bar
    bad = runner.invoke(monitor, ["--tenant", "nobody"], obj=ctx)
    assert bad.exit_code != 0 and "does not exist" in bad.output


@pytest.mark.slow
def test_drift_reference_is_the_champions_training_data_when_known(
    client: FlaskClient, world: World, settings: Settings, tmp_path: Path
) -> None:
    from flywheel.models.records import Prediction, Task
    from flywheel.models.training import ChampionSlot, ModelVersion

    put_sla(client, world)
    # Old rows: 200 the champion trained on (short texts) and 200 it did not (long texts); the current window
    # looks like the training rows, so against the training data there is no drift.
    # (prefixes of equal length: the text length is one of the signals)
    add_predictions(world.db, "acme", labeled(200, 190), prefix="trn", at=NOW - timedelta(days=30))
    add_predictions(world.db, "acme", labeled(200, 190, conf=0.5), prefix="other", at=NOW - timedelta(days=10),
                    text_length=400)  # fmt: skip
    add_predictions(world.db, "acme", labeled(200, 190), prefix="cur")
    artifact = tmp_path / "model"
    artifact.mkdir()
    with world.db.session() as session:
        train_ids = list(session.scalars(select(Prediction.id).where(Prediction.client_id.like("trn-%"))))
        task = session.scalars(select(Task)).one()
        model = ModelVersion(task_id=task.id, tenant_id=None, version="m1", rung="few_shot", status="champion",
                             metrics={}, lineage={}, artifact_path=str(artifact))  # fmt: skip
        session.add(model)
        session.flush()
        session.add(ChampionSlot(task_id=task.id, tenant_key=0, tenant_id=None, model_id=model.id))
    (artifact / "lineage.json").write_text(json.dumps({"train_ids": train_ids}))

    run_monitoring(world.db, fast(settings), now=NOW)
    row = client.get("/v1/slas", headers=world.auth(world.acme_read)).get_json()["items"][0]
    assert row["drift"]["reference"] == "training_data"
    assert row["drift"]["status"] == "none"
    # Without the lineage file, the previous window (the long, low-confidence rows) is the reference: drift.
    (artifact / "lineage.json").unlink()
    run_monitoring(world.db, fast(settings), now=NOW + timedelta(minutes=5))
    row = client.get("/v1/slas", headers=world.auth(world.acme_read)).get_json()["items"][0]
    assert row["drift"]["reference"] == "window" and row["drift"]["status"] == "detected"


@pytest.mark.slow
def test_drift_embeds_text_through_the_embedding_cache(client: FlaskClient, world: World, settings: Settings) -> None:
    put_sla(client, world)
    add_predictions(world.db, "acme", labeled(40, 38), prefix="ref", at=NOW - timedelta(days=10))
    add_predictions(world.db, "acme", labeled(40, 38), prefix="cur")
    run_monitoring(world.db, settings.with_(drift_embedding_cap=40), now=NOW)
    row = client.get("/v1/slas", headers=world.auth(world.acme_read)).get_json()["items"][0]
    assert row["drift"]["status"] in ("none", "detected")
    assert set(row["drift"]["columns"]) == {"predicted_label", "confidence", "text_length", "text"}
    assert 0.0 <= row["drift"]["columns"]["text"]["score"] <= 1.0


def test_drift_frames_split_the_windows_in_id_order_and_keep_to_the_tenant(
    client: FlaskClient, world: World, settings: Settings
) -> None:
    from flywheel.models.slas import Sla
    from flywheel.monitoring.frames import load_drift_inputs

    put_sla(client, world)
    put_sla(client, world, tenant="globex")
    # Each window's rows come in id order, which is not their time order here ("c" is older than "b").
    add_predictions(world.db, "acme", [("a", None, 0.91)] * 3, prefix="cur", text_length=5)
    add_predictions(world.db, "acme", [("b", None, 0.52)], prefix="rb", at=NOW - timedelta(days=7, hours=1),
                    text_length=20)  # fmt: skip
    add_predictions(world.db, "acme", [("c", None, 0.53)], prefix="rc", at=NOW - timedelta(days=7, hours=2),
                    text_length=20)  # fmt: skip
    add_predictions(world.db, "acme", [("z", None, 0.1)], prefix="old", at=NOW - timedelta(days=15))
    add_predictions(world.db, "acme", [("z", None, 0.1)], prefix="later", at=NOW + timedelta(hours=1))
    add_predictions(world.db, "globex", [("g", None, 0.7)] * 4, prefix="gx")
    with world.db.session() as session:
        sla = session.scalars(select(Sla).order_by(Sla.id)).first()
        assert sla is not None
        inputs = load_drift_inputs(session, sla, fast(settings, drift_min_rows=1), now=NOW)
    assert inputs.reference_kind == "window"
    assert inputs.reference.predicted_label.tolist() == ["b", "c"]
    assert inputs.reference.confidence.tolist() == [0.52, 0.53]
    assert inputs.current.predicted_label.tolist() == ["a"] * 3
    assert inputs.reference.text_length.tolist() == [len("text rb-0 ") + 20] * 2
    assert inputs.current.text_length.tolist() == [len("text cur-0 ") + 5] * 3
    assert list(inputs.current.columns) == ["predicted_label", "confidence", "text_length"]
    assert inputs.current.dtypes.tolist() == [object, float, float]
    # Sampling is seeded and keeps id order.
    with world.db.session() as session:
        sla = session.get(Sla, sla.id)
        assert sla is not None
        capped = load_drift_inputs(session, sla, fast(settings, drift_min_rows=1, drift_sample_cap=2), now=NOW)
        again = load_drift_inputs(session, sla, fast(settings, drift_min_rows=1, drift_sample_cap=2), now=NOW)
    assert len(capped.current) == 2 and capped.current.equals(again.current)
    assert capped.reference.predicted_label.tolist() == ["b", "c"]
