"""A tenant's data-rights settings (sharing, retention) and its deletion: 202, keys refused at once, ``deleting``,
a batched job that survives a restart half-way, its artifacts gone, every other tenant untouched, then 404."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy import func, select

from flywheel.core.config import Settings
from flywheel.core.db import Base, Database, utcnow
from flywheel.domain.erasure import delete_tenant_batch, expire_old_records, run_retention, run_tenant_deletions
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.rights import Erasure
from flywheel.models.slas import Alert, Sla
from flywheel.models.training import ModelTrainingRow, ModelVersion
from flywheel.scheduler import JOB_DELETIONS, JOB_RIGHTS, SchedulerService, select_job_runs

from support import World, prediction


def seed(client: FlaskClient, world: World, key: str, prefix: str, n: int, *, created_at: str | None = None) -> None:
    items = [prediction(f"{prefix}-{i}", **({"created_at": created_at} if created_at else {})) for i in range(n)]
    assert client.post("/v1/predictions", json={"predictions": items}, headers=world.auth(key)).status_code == 201
    feedback = [
        {"id": f"fb-{prefix}-{i}", "prediction_id": f"{prefix}-{i}", "label": "card_linking", "source": "agent"}
        for i in range(n)
    ]
    assert client.post("/v1/feedback", json={"feedback": feedback}, headers=world.auth(key)).status_code == 201


def rows_of(db: Database, slug: str) -> dict[str, int]:
    """Every row of every table with a tenant_id, for one tenant."""
    with db.session() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == slug))
    out: dict[str, int] = {}
    with db.engine.connect() as conn:
        for t in Base.metadata.sorted_tables:
            if "tenant_id" in t.c and t.name != "erasures":
                out[t.name] = int(
                    conn.execute(select(func.count()).select_from(t).where(t.c.tenant_id == tenant_id)).scalar_one()
                )
    return out


def test_get_and_patch_a_tenants_data_rights(client: FlaskClient, world: World) -> None:
    admin = world.auth(world.admin)
    got = client.get("/v1/tenants/acme", headers=admin).get_json()
    assert (got["share_labels"], got["retention_days"], got["status"]) == (True, None, "active")
    patched = client.patch("/v1/tenants/acme", json={"share_labels": False, "retention_days": 90}, headers=admin)
    assert patched.status_code == 200
    assert (patched.get_json()["share_labels"], patched.get_json()["retention_days"]) == (False, 90)
    # A field left out is unchanged; null retention keeps records until erased.
    again = client.patch("/v1/tenants/acme", json={"retention_days": None}, headers=admin).get_json()
    assert (again["share_labels"], again["retention_days"]) == (False, None)
    for bad in ({"retention_days": 0}, {"share_labels": "no"}, {"other": 1}):
        assert client.patch("/v1/tenants/acme", json=bad, headers=admin).status_code == 422
    # Its own key reads it; another tenant's key, or a non-admin PATCH, do not.
    assert client.get("/v1/tenants/acme", headers=world.auth(world.acme_read)).get_json()["share_labels"] is False
    assert client.get("/v1/tenants/acme", headers=world.auth(world.globex_rw)).status_code == 404
    assert (
        client.patch("/v1/tenants/acme", json={"share_labels": True}, headers=world.auth(world.acme_rw)).status_code
        == 403
    )
    assert client.get("/v1/tenants/nobody", headers=admin).status_code == 404


def test_opting_out_taints_the_shared_models_its_labels_trained(client: FlaskClient, world: World) -> None:
    seed(client, world, world.acme_rw, "a", 3)
    seed(client, world, world.globex_rw, "g", 2)
    with world.db.session() as session:
        task_id = session.scalar(select(Task.id))
        acme_id = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
        shared = ModelVersion(task_id=task_id, tenant_id=None, version="shared-1", rung="few_shot", status="champion")
        variant = ModelVersion(task_id=task_id, tenant_id=acme_id, version="acme-1", rung="fine_tuned")
        session.add_all([shared, variant])
        session.flush()
        for pid in session.scalars(select(Prediction.id)):
            session.add(ModelTrainingRow(model_id=shared.id, prediction_id=pid))
        for pid in session.scalars(select(Prediction.id).where(Prediction.tenant_id == acme_id)):
            session.add(ModelTrainingRow(model_id=variant.id, prediction_id=pid))
    answer = client.patch("/v1/tenants/acme", json={"share_labels": False}, headers=world.auth(world.admin))
    assert answer.status_code == 200
    models = {m["version"]: m for m in client.get("/v1/models", headers=world.auth(world.admin)).get_json()["items"]}
    assert (models["shared-1"]["tainted"], models["shared-1"]["tainted_rows"]) == (True, 3)
    assert (models["acme-1"]["tainted"], models["acme-1"]["tainted_rows"]) == (False, 0)  # its own variant: fine
    with world.db.session() as session:
        # The shared model keeps the lineage of globex's rows only; erasing an acme row later does not count twice.
        assert (
            session.scalar(
                select(func.count())
                .select_from(ModelTrainingRow)
                .where(ModelTrainingRow.model_id == models["shared-1"]["id"])
            )
            == 2
        )
    client.delete("/v1/predictions/a-0", headers=world.auth(world.acme_rw))
    models = {m["version"]: m for m in client.get("/v1/models", headers=world.auth(world.admin)).get_json()["items"]}
    assert models["shared-1"]["tainted_rows"] == 3 and models["acme-1"]["tainted_rows"] == 1


def test_deleting_a_tenant_refuses_its_keys_at_once_then_removes_everything_of_it(
    client: FlaskClient, world: World, settings: Settings
) -> None:
    db = world.db
    seed(client, world, world.acme_rw, "a", 25)
    seed(client, world, world.globex_rw, "g", 7)
    artifact = Path(settings.artifacts_dir) / "intent" / "acme-variant"
    artifact.mkdir(parents=True)
    (artifact / "model.safetensors").write_bytes(b"weights")
    shared_artifact = Path(settings.artifacts_dir) / "intent" / "shared"
    shared_artifact.mkdir(parents=True)
    with db.session() as session:
        task_id = session.scalar(select(Task.id))
        acme_id = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
        variant = ModelVersion(
            task_id=task_id, tenant_id=acme_id, version="acme-1", rung="fine_tuned", artifact_path=str(artifact)
        )
        shared = ModelVersion(
            task_id=task_id, tenant_id=None, version="shared-1", rung="few_shot", artifact_path=str(shared_artifact)
        )
        session.add_all(
            [
                variant,
                shared,
                Sla(
                    tenant_id=acme_id,
                    task_id=task_id,
                    metric="accuracy",
                    threshold=0.9,
                    window_days=7,
                    min_labeled=10,
                    warning_margin=0.02,
                ),
            ]
        )
        session.flush()
        for pid in session.scalars(select(Prediction.id)):
            session.add(ModelTrainingRow(model_id=shared.id, prediction_id=pid))
        session.add(
            Alert(tenant_id=acme_id, task_id=task_id, kind="sla_status", to_status="breached", message="m", payload={})
        )
    globex_before = rows_of(db, "globex")
    admin = world.auth(world.admin)

    assert client.delete("/v1/tenants/acme", json={"confirm": "acme!"}, headers=admin).status_code == 422
    assert client.delete("/v1/tenants/acme", json={"confirm": "globex"}, headers=admin).status_code == 422
    answer = client.delete("/v1/tenants/acme", json={"confirm": "acme"}, headers=admin)
    assert answer.status_code == 202 and answer.get_json()["status"] == "deleting"
    assert client.get("/v1/tasks", headers=world.auth(world.acme_rw)).status_code == 401  # refused at once
    assert client.get("/v1/tenants/acme", headers=admin).get_json()["status"] == "deleting"
    assert client.patch("/v1/tenants/acme", json={"share_labels": False}, headers=admin).status_code == 409
    assert client.delete("/v1/tenants/acme", json={"confirm": "acme"}, headers=admin).status_code == 202

    # The job, interrupted after two batches of 10 (a restart: a new call resumes from what the database holds).
    assert run_tenant_deletions(db, batch_size=10, max_batches=2) == []
    assert client.get("/v1/tenants/acme", headers=admin).get_json()["status"] == "deleting"
    assert rows_of(db, "acme")["predictions"] == 5 and artifact.exists()
    assert run_tenant_deletions(db, batch_size=10) == ["acme"]

    assert client.get("/v1/tenants/acme", headers=admin).status_code == 404
    assert client.delete("/v1/tenants/acme", json={"confirm": "acme"}, headers=admin).status_code == 404
    assert not artifact.exists() and shared_artifact.exists()
    assert rows_of(db, "globex") == globex_before  # another tenant's data untouched
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Tenant).where(Tenant.slug == "acme")) == 0
        left = session.scalars(select(ModelVersion.version)).all()
        assert left == ["shared-1"]
        shared_row = session.scalar(select(ModelVersion).where(ModelVersion.version == "shared-1"))
        assert shared_row is not None and shared_row.tainted_rows == 25
        assert session.scalar(select(func.count()).select_from(ModelTrainingRow)) == 7
        audit = session.scalars(select(Erasure).where(Erasure.tenant_slug == "acme")).all()
        assert sum(a.counts.get("predictions", 0) for a in audit) == 25 and len(audit) == 4
    assert run_tenant_deletions(db) == []  # nothing left to do
    with db.session() as session:
        assert delete_tenant_batch(session, 10_000) is True  # a tenant already gone: done


def test_retention_erases_what_is_older_than_each_tenants_window_in_batches(client: FlaskClient, world: World) -> None:
    db = world.db
    now = utcnow()
    old = (now - timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
    recent = (now - timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    seed(client, world, world.acme_rw, "old", 7, created_at=old)
    seed(client, world, world.acme_rw, "new", 3, created_at=recent)
    seed(client, world, world.globex_rw, "old", 4, created_at=old)  # globex keeps everything
    client.patch("/v1/tenants/acme", json={"retention_days": 30}, headers=world.auth(world.admin))

    with db.session() as session:
        first = expire_old_records(session, now, batch_size=5)
    assert first.predictions == 5 and first.feedback == 5
    assert run_retention(db, now=now, batch_size=5)["predictions"] == 2
    assert run_retention(db, now=now)["predictions"] == 0
    with db.session() as session:
        kept = session.execute(select(Tenant.slug, Prediction.client_id).join(Tenant)).all()
        assert sorted(kept) == sorted(
            [("acme", f"new-{i}") for i in range(3)] + [("globex", f"old-{i}") for i in range(4)]
        )
        reasons = set(session.scalars(select(Erasure.reason)))
        assert reasons == {"retention"}


def test_the_scheduler_runs_retention_nightly_and_deletions_while_it_leads(
    client: FlaskClient, world: World, settings: Settings
) -> None:
    old = (utcnow() - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    seed(client, world, world.acme_rw, "old", 3, created_at=old)
    seed(client, world, world.globex_rw, "g", 2)
    admin = world.auth(world.admin)
    client.patch("/v1/tenants/acme", json={"retention_days": 7}, headers=admin)
    client.delete("/v1/tenants/globex", json={"confirm": "globex"}, headers=admin)
    service = SchedulerService(world.db, settings.with_(erasure_batch_size=2))
    assert {JOB_RIGHTS, JOB_DELETIONS} <= set(service.triggers)
    assert service.tenant_deletions() == []  # only the leader works
    service.leading.set()
    assert service.run_cron_job(JOB_RIGHTS, service.data_rights) is True
    assert service.run_cron_job(JOB_RIGHTS, service.data_rights) is False  # once per fire time
    assert [status for _, _, status in select_job_runs(world.db, JOB_RIGHTS)] == ["succeeded"]
    assert service.tenant_deletions() == ["globex"]
    assert rows_of(world.db, "acme")["predictions"] == 0
    assert client.get("/v1/tenants/globex", headers=admin).status_code == 404
