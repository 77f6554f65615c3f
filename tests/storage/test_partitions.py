"""PostgreSQL's monthly partitions of the predictions: created ahead, filled by ingest, dropped by retention, and
reached by migrating an existing unpartitioned database. SQLite stays one plain table."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.core.migrate import alembic_config, is_current
from flywheel.domain import partitions
from flywheel.domain.erasure import run_retention
from flywheel.models.records import Task, Tenant
from flywheel.models.rights import Erasure
from flywheel.models.training import ModelTrainingRow, ModelVersion
from flywheel.scheduler import housekeeping

from support import World, prediction

PG_URL = os.environ.get("FLYWHEEL_TEST_DATABASE_URL")
DEC = datetime(2026, 12, 15, tzinfo=UTC)


def _pg_only(db: Database) -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("partitions exist on PostgreSQL only; SQLite keeps one table")


def _where(db: Database, client_id: str) -> str:
    with db.engine.connect() as conn:
        return str(
            conn.execute(
                text("SELECT tableoid::regclass::text FROM predictions WHERE client_id = :c"), {"c": client_id}
            ).scalar_one()
        )


def _post(client: FlaskClient, world: World, items: list[dict[str, object]]) -> None:
    response = client.post("/v1/predictions", json={"predictions": items}, headers=world.auth(world.acme_ingest))
    assert response.status_code in (200, 201), response.get_json()


def test_sqlite_keeps_one_table(db: Database) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("the SQLite case")
    with db.session() as session:
        assert not partitions.is_partitioned(session)
        assert partitions.ensure_partitions(session, DEC) == []


def test_a_tenant_keeping_longer_keeps_its_months(client: FlaskClient, world: World) -> None:
    _pg_only(world.db)
    with world.db.session() as session:
        partitions.create_month(session, datetime(2026, 9, 1, tzinfo=UTC))
        session.scalars(select(Tenant).where(Tenant.slug == "globex")).one().retention_days = 400
    _post(client, world, [prediction("m9", created_at="2026-09-10T00:00:00Z")])
    assert run_retention(world.db, now=datetime(2026, 12, 10, tzinfo=UTC), default_days=39)["predictions"] == 1
    with world.db.session() as session:  # acme's row went as an erasure; globex's 400 days keep the month
        assert "predictions_y2026m09" in {p.name for p in partitions.partitions(session)}


def test_housekeeping_creates_the_coming_months_once(db: Database) -> None:
    _pg_only(db)
    settings, june = Settings(database_url=db.url, partition_months_ahead=5), datetime(2027, 6, 3, tzinfo=UTC)
    created = housekeeping(db, settings, now=june)
    assert created["partitions_created"][-1] == "predictions_y2027m11"
    again = housekeeping(db, settings, now=june)
    assert again["partitions_created"] == []
    with db.session() as session:
        months = [p.name for p in partitions.partitions(session)]
    assert {"predictions_y2027m06", "predictions_y2027m11"} <= set(months)
    assert months == sorted(months)


def test_ingest_lands_in_the_month_of_created_at(client: FlaskClient, world: World) -> None:
    _pg_only(world.db)
    _post(
        client,
        world,
        [
            prediction("dec", created_at="2026-12-20T10:00:00Z"),
            prediction("old", created_at="2019-03-01T10:00:00Z"),
        ],
    )
    assert _where(world.db, "dec") == "predictions_y2026m12"
    assert _where(world.db, "old") == "predictions_default"  # before every partition: the default catches it
    with world.db.session() as session:
        assert partitions.create_month(session, datetime(2019, 3, 1, tzinfo=UTC))
    assert _where(world.db, "old") == "predictions_y2019m03"  # a month created later takes its rows along


def test_a_retried_batch_is_stored_once_across_partitions(client: FlaskClient, world: World) -> None:
    _pg_only(world.db)
    items = [prediction(f"p{i}", created_at=f"2026-{10 + i % 3:02d}-02T00:00:00Z") for i in range(30)]
    _post(client, world, items)
    _post(client, world, items)  # the retry: every key already exists, whatever month it went to
    _post(client, world, items[:1])  # the single-item path
    changed = dict(items[0], text="other words")
    response = client.post("/v1/predictions", json={"predictions": [changed]}, headers=world.auth(world.acme_ingest))
    assert response.status_code == 409
    with world.db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar_one() == 30
        assert conn.execute(text("SELECT count(*) FROM prediction_keys")).scalar_one() == 30
        ids = conn.execute(text("SELECT count(DISTINCT id) FROM predictions")).scalar_one()
    assert ids == 30


def test_retention_drops_whole_months_and_what_points_at_them(client: FlaskClient, world: World) -> None:
    _pg_only(world.db)
    with world.db.session() as session:
        for month in (9, 10, 11, 12):
            partitions.create_month(session, datetime(2026, month, 1, tzinfo=UTC))
    _post(client, world, [prediction(f"m{m}", created_at=f"2026-{m:02d}-10T00:00:00Z") for m in (9, 10, 11, 12)])
    _post(client, world, [prediction("ancient", created_at="2018-01-01T00:00:00Z")])
    fb = {"id": "f9", "prediction_id": "m9", "label": "exchange_rate", "source": "end_user"}
    response = client.post("/v1/feedback", json={"feedback": [fb]}, headers=world.auth(world.acme_ingest))
    assert response.status_code in (200, 201), response.get_json()
    with world.db.session() as session:  # a model that trained on September's row
        task_id = session.scalar(select(Task.id))
        model = ModelVersion(task_id=task_id, version="intent-shared-1", rung="few_shot", status="champion", metrics={})
        session.add(model)
        session.flush()
        m9 = session.scalar(text("SELECT id FROM predictions WHERE client_id = 'm9'"))
        session.add(ModelTrainingRow(model_id=model.id, prediction_id=m9))
    now = datetime(2026, 12, 10, tzinfo=UTC)  # cutoff: November 1st
    result = run_retention(world.db, now=now, default_days=39)
    assert result["predictions"] == 3  # September and October whole, then the default partition's row as an erasure
    with world.db.session() as session:
        assert session.get(ModelVersion, model.id).tainted_rows == 1  # type: ignore[union-attr]
        audit = session.scalars(select(Erasure).where(Erasure.reason == "retention")).all()
        left_months = {p.name for p in partitions.partitions(session)}
    assert not {"predictions_y2026m09", "predictions_y2026m10"} & left_months
    assert {"predictions_y2026m11", "predictions_y2026m12"} <= left_months
    months = sorted(a.counts["partition"] for a in audit if "partition" in a.counts)
    assert months == ["predictions_y2026m09", "predictions_y2026m10"]
    assert next(a.id_hashes for a in audit if "partition" not in a.counts)  # the row erased as rows: its id hash
    with world.db.engine.connect() as conn:
        left = sorted(conn.execute(text("SELECT client_id FROM predictions")).scalars())
        keys = sorted(conn.execute(text("SELECT client_id FROM prediction_keys")).scalars())
        feedback = conn.execute(text("SELECT count(*) FROM feedback")).scalar_one()
        lineage = conn.execute(text("SELECT count(*) FROM model_training_rows")).scalar_one()
    assert left == keys == ["m11", "m12"]
    assert feedback == 0 and lineage == 0
    _post(client, world, [prediction("m9", created_at="2026-12-01T00:00:00Z")])  # its key is free again


@pytest.fixture
def scratch_pg() -> Iterator[str]:
    """An empty PostgreSQL database of its own (migrations are run on it by the test)."""
    if not PG_URL:
        pytest.skip("set FLYWHEEL_TEST_DATABASE_URL to test the PostgreSQL migration")
    name = f"flywheel_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_upgrading_an_unpartitioned_database_keeps_every_row(scratch_pg: str) -> None:
    db = Database(scratch_pg)
    cfg = alembic_config(scratch_pg)
    command.upgrade(cfg, "0006")
    command.upgrade(cfg, "0005")
    with db.engine.begin() as conn:
        tid = conn.execute(
            text("INSERT INTO tenants (slug, name, created_at) VALUES ('a', 'A', now()) RETURNING id")
        ).scalar_one()
        task = conn.execute(
            text(
                "INSERT INTO tasks (name, labels, label_descriptions, description, created_at) "
                "VALUES ('t', '[\"x\", \"y\"]', '{}', '', now()) RETURNING id"
            )
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO predictions (tenant_id, task_id, client_id, text, label, confidence, created_at, "
                "received_at, content_hash, bucket, label_discarded, feedback_count) "
                "SELECT :tenant, :task, 'c' || i, 'text ' || i, 'x', 0.9, "
                "timestamptz '2025-01-15' + i * interval '1 day', now(), 'h', i % 100, false, 0 "
                "FROM generate_series(1, 500) AS i"
            ),
            {"tenant": tid, "task": task},
        )
        conn.execute(
            text(
                "INSERT INTO feedback (tenant_id, prediction_id, client_id, label, source, created_at, received_at, "
                "content_hash) SELECT tenant_id, id, 'f' || id, 'y', 'end_user', now(), now(), 'h' FROM predictions"
            )
        )
        before = conn.execute(text("SELECT sum(hashtext(client_id || id)) FROM predictions")).scalar_one()
    command.upgrade(cfg, "heads")
    assert is_current(db.engine)
    with db.engine.connect() as conn:
        assert partitions.is_partitioned(conn)
        after = conn.execute(text("SELECT sum(hashtext(client_id || id)) FROM predictions")).scalar_one()
        keys = conn.execute(text("SELECT count(*) FROM prediction_keys")).scalar_one()
        months = len(partitions.partitions(conn))
        joined = conn.execute(
            text("SELECT count(*) FROM feedback f JOIN predictions p ON p.id = f.prediction_id")
        ).scalar_one()
        nextval = conn.execute(text("SELECT nextval('predictions_id_seq')")).scalar_one()
    assert after == before and keys == 500 and joined == 500
    assert months >= 17  # Jan 2025 to May 2026 hold rows; the months up to now and three ahead are created too
    assert nextval == 501  # the id sequence carried over
    command.downgrade(cfg, "0006")  # and back: one plain table again, rows intact
    with db.engine.connect() as conn:
        assert not partitions.is_partitioned(conn)
        assert conn.execute(text("SELECT sum(hashtext(client_id || id)) FROM predictions")).scalar_one() == before
    db.dispose()
