"""Lineage follows deletion: a shared model trained on an erased record is tainted, the next nightly run leaves the
record out and its lineage says what it replaces; an opted-out tenant's rows never reach a later shared model; a
champion tainted too long raises one alert per tenant it serves."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.domain import champions
from flywheel.domain.auth import create_key
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.slas import Alert
from flywheel.models.training import ChampionSlot, ModelTrainingRow, ModelVersion, TrainingRun
from flywheel.monitoring.taint import alert_stale_taints
from flywheel.retrain import jobs

from support.retrain import TASK, add_labeled, make_task, one_torch_thread, rs, tiny_base

__all__ = ["one_torch_thread", "rs", "tiny_base"]  # the fixtures this module uses


def key_of(db: Database, slug: str | None, scopes: list[str]) -> dict[str, str]:
    with db.session() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == slug)) if slug else None
        return {"Authorization": f"Bearer {create_key(session, tenant=tenant, scopes=scopes)[1]}"}


def train_shared(db: Database, rs: Settings) -> TrainingRun:
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        run_id = jobs.queue_run(session, task, None, trigger="test").id
    jobs.run_training(db, rs, run_id)
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None and run.model_id is not None, run.error if run else None
        return run


def training_ids(db: Database, model_id: int) -> set[int]:
    with db.session() as session:
        rows = session.scalars(select(ModelTrainingRow.prediction_id).where(ModelTrainingRow.model_id == model_id))
        return set(rows)


@pytest.mark.slow
def test_an_erased_record_taints_the_shared_model_and_the_next_night_leaves_it_out(
    db: Database, rs: Settings, tiny_base: Path, client: FlaskClient
) -> None:
    make_task(db, tiny_base)
    add_labeled(db, "acme", 90, seed=1)
    add_labeled(db, "globex", 90, seed=2)
    first = train_shared(db, rs)
    assert first.decision == "promoted"
    trained = training_ids(db, first.model_id or 0)
    assert len(trained) == first.lineage["n_train"] > 0
    with db.session() as session:
        victim_id, victim = session.execute(
            select(Prediction.id, Prediction.client_id).where(Prediction.id.in_(trained)).order_by(Prediction.id)
        ).first() or (0, "")
        owner = session.scalar(select(Tenant.slug).join(Prediction).where(Prediction.id == victim_id))

    erased = client.delete(f"/v1/predictions/{victim}", headers=key_of(db, owner, ["ingest"]))
    assert erased.get_json()["training_rows"] == 1 and erased.get_json()["models_tainted"] == 1
    models = client.get(f"/v1/models?task={TASK}", headers=key_of(db, None, ["admin"])).get_json()["items"]
    champion = next(m for m in models if m["id"] == first.model_id)
    assert (champion["status"], champion["tainted"], champion["tainted_rows"]) == ("champion", True, 1)

    queued = jobs.nightly_retrain(db, rs)
    jobs.process_queue(db, rs)
    with db.session() as session:
        second = session.get(TrainingRun, queued[0])
        assert second is not None and second.model_id is not None
        lineage = dict(second.lineage)
    assert lineage["replaces_tainted"] == {"version": champion["version"], "tainted_rows": 1}
    assert lineage["n_train"] == first.lineage["n_train"] - 1
    assert training_ids(db, second.model_id) == trained - {victim_id}
    assert second.decision == "promoted", second.reasons  # the gate replaced the tainted champion
    with db.session() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == TASK))
        serving = champions.champion_for(session, task_id or 0, None)
        assert serving is not None and serving.id == second.model_id and not serving.tainted


@pytest.mark.slow
def test_an_opted_out_tenant_is_in_no_later_shared_model(
    db: Database, rs: Settings, tiny_base: Path, client: FlaskClient
) -> None:
    make_task(db, tiny_base)
    add_labeled(db, "acme", 90, seed=3)
    add_labeled(db, "globex", 90, seed=4)
    before = train_shared(db, rs)
    assert set(before.lineage["tenants"]) == {"acme", "globex"}
    answer = client.patch("/v1/tenants/globex", json={"share_labels": False}, headers=key_of(db, None, ["admin"]))
    assert answer.status_code == 200
    with db.session() as session:
        model = session.get(ModelVersion, before.model_id)
        assert model is not None and model.tainted_rows == before.lineage["tenants"]["globex"]

    after = train_shared(db, rs)
    assert set(after.lineage["tenants"]) == {"acme"}
    assert set(after.lineage["holdout_tenants"]) == {"acme"}
    with db.session() as session:
        globex_rows = session.scalar(
            select(func.count())
            .select_from(ModelTrainingRow)
            .join(Prediction, Prediction.id == ModelTrainingRow.prediction_id)
            .join(Tenant, Tenant.id == Prediction.tenant_id)
            .where(ModelTrainingRow.model_id == after.model_id, Tenant.slug == "globex")
        )
        assert globex_rows == 0


def test_a_champion_tainted_too_long_alerts_each_tenant_it_serves_once(
    db: Database, settings: Settings, client: FlaskClient
) -> None:
    now = utcnow()
    with db.session() as session:
        task = Task(name="intent", labels=["a", "b"], label_descriptions={}, description="")
        acme, globex, initech = (Tenant(slug=s, name=s) for s in ("acme", "globex", "initech"))
        session.add_all([task, acme, globex, initech])
        session.flush()
        old = now - timedelta(days=31)
        shared = ModelVersion(
            task_id=task.id, version="shared-1", rung="few_shot", status="champion", tainted_rows=2, tainted_at=old
        )
        variant = ModelVersion(
            task_id=task.id,
            tenant_id=globex.id,
            version="globex-1",
            rung="fine_tuned",
            status="champion",
            tainted_rows=1,
            tainted_at=now - timedelta(days=3),
        )
        session.add_all([shared, variant])
        session.flush()
        session.add_all(
            [
                ChampionSlot(task_id=task.id, tenant_key=0, model_id=shared.id),
                ChampionSlot(task_id=task.id, tenant_key=globex.id, tenant_id=globex.id, model_id=variant.id),
            ]
        )
        for tenant, n in ((acme, 2), (globex, 1)):  # initech has no traffic on the task: not served
            for i in range(n):
                session.add(
                    Prediction(
                        tenant_id=tenant.id,
                        task_id=task.id,
                        client_id=f"p{i}",
                        text="t",
                        label="a",
                        confidence=0.5,
                        created_at=now,
                        content_hash="h",
                        bucket=50,
                    )
                )
    with db.session() as session:
        alerts = alert_stale_taints(session, settings, now=now)
        assert [(a.kind, a.payload["tenant"], a.payload["version"]) for a in alerts] == [
            ("model_tainted", "acme", "shared-1")
        ]  # globex has its own (recently tainted) variant; initech is not served on this task
    with db.session() as session:
        assert alert_stale_taints(session, settings, now=now + timedelta(days=1)) == []  # once, not nightly
    listed = client.get("/v1/alerts?tenant=acme", headers=key_of(db, None, ["admin"])).get_json()["items"]
    assert [a["kind"] for a in listed] == ["model_tainted"]
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Alert)) == 1


def test_the_nightly_run_retrains_a_tainted_variant_below_the_eligibility_bar(db: Database, settings: Settings) -> None:
    with db.session() as session:
        task = Task(name="intent", labels=["a", "b"], label_descriptions={}, description="")
        acme = Tenant(slug="acme", name="Acme")
        session.add_all([task, acme])
        session.flush()
        variant = ModelVersion(
            task_id=task.id,
            tenant_id=acme.id,
            version="acme-1",
            rung="fine_tuned",
            status="champion",
            tainted_rows=1,
            tainted_at=utcnow(),
        )
        session.add(variant)
        session.flush()
        session.add(ChampionSlot(task_id=task.id, tenant_key=acme.id, tenant_id=acme.id, model_id=variant.id))
    queued = jobs.nightly_retrain(db, settings)
    with db.session() as session:
        scopes = {(r.tenant.slug if r.tenant else None) for r in session.scalars(select(TrainingRun)) if r.id in queued}
    assert scopes == {None, "acme"}
