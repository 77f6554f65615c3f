"""PostgreSQL's monthly partitions of the predictions and of their feedback: created ahead, filled by ingest (the
feedback in its prediction's month), dropped together by retention, and reached by migrating an existing
unpartitioned database. SQLite stays one plain table each."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from flask.testing import FlaskClient
from sqlalchemy import Connection, Select, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.core.migrate import alembic_config, is_current
from flywheel.domain import partitions
from flywheel.domain.erasure import run_retention
from flywheel.feedback.jobs import rules_backfill
from flywheel.models.records import Feedback, Prediction, Task, Tenant
from flywheel.models.rights import Erasure
from flywheel.models.training import ModelTrainingRow, ModelVersion
from flywheel.scheduler import housekeeping

from support import World, prediction

PG_URL = os.environ.get("FLYWHEEL_TEST_DATABASE_URL")
# A checksum of the feedback rows that survives any copy: every column that existed before revision 0012.
FEEDBACK_SUM = (
    "SELECT count(*), sum(hashtext(id || '/' || tenant_id || '/' || prediction_id || '/' || client_id || '/' || "
    "coalesce(label, '-') || '/' || source || '/' || created_at || '/' || received_at || '/' || content_hash)) "
    "FROM feedback"
)
DEC = datetime(2026, 12, 15, tzinfo=UTC)


def _pg_only(db: Database) -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("partitions exist on PostgreSQL only; SQLite keeps one table")


def _where(db: Database, client_id: str, table: str = "predictions") -> str:
    with db.engine.connect() as conn:
        return str(
            conn.execute(
                text(f"SELECT tableoid::regclass::text FROM {table} WHERE client_id = :c"), {"c": client_id}
            ).scalar_one()
        )


def _post(client: FlaskClient, world: World, items: list[dict[str, object]]) -> None:
    response = client.post("/v1/predictions", json={"predictions": items}, headers=world.auth(world.acme_ingest))
    assert response.status_code in (200, 201), response.get_json()


def _feedback(fid: str, prediction_id: str, label: str = "exchange_rate") -> dict[str, object]:
    return {"id": fid, "prediction_id": prediction_id, "label": label, "source": "end_user"}


def _post_feedback(client: FlaskClient, world: World, items: list[dict[str, object]]) -> int:
    response = client.post("/v1/feedback", json={"feedback": items}, headers=world.auth(world.acme_ingest))
    assert response.status_code in (200, 201, 409), response.get_json()
    return response.status_code


def _count(db: Database, sql: str) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _astray(db: Database) -> int:
    """Feedback rows whose ``prediction_created_at`` is not their prediction's ``created_at`` (always none)."""
    return _count(
        db,
        "SELECT count(*) FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
        "WHERE f.prediction_created_at <> p.created_at",
    )


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
    assert created["partitions_created"][-2:] == ["predictions_y2027m11", "feedback_y2027m11"]
    again = housekeeping(db, settings, now=june)
    assert again["partitions_created"] == []
    with db.session() as session:
        months = [p.name for p in partitions.partitions(session)]
        feedback_months = [p.name for p in partitions.partitions(session, "feedback")]
    assert {"predictions_y2027m06", "predictions_y2027m11"} <= set(months)
    assert months == sorted(months)
    assert feedback_months == [name.replace("predictions_", "feedback_") for name in months]  # the same months


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


def test_feedback_lands_in_its_predictions_month(client: FlaskClient, world: World) -> None:
    _pg_only(world.db)
    _post(
        client,
        world,
        [
            prediction("dec", created_at="2026-12-20T10:00:00Z"),
            prediction("old", created_at="2019-04-01T10:00:00Z"),
        ],
    )
    # feedback given in another month than its prediction's still goes to the prediction's month
    _post_feedback(
        client,
        world,
        [
            dict(_feedback("f-dec", "dec"), created_at="2027-02-01T00:00:00Z"),
            _feedback("f-old", "old"),
        ],
    )
    _post_feedback(client, world, [_feedback("f-dec-2", "dec", "card_arrival")])  # the single-item path
    assert _where(world.db, "f-dec", "feedback") == _where(world.db, "f-dec-2", "feedback") == "feedback_y2026m12"
    assert _where(world.db, "f-old", "feedback") == "feedback_default"
    with world.db.session() as session:
        assert partitions.create_month(session, datetime(2019, 4, 1, tzinfo=UTC)) == [
            "predictions_y2019m04",
            "feedback_y2019m04",
        ]
    assert _where(world.db, "old") == "predictions_y2019m04"  # both tables' rows of the month move in
    assert _where(world.db, "f-old", "feedback") == "feedback_y2019m04"
    assert _astray(world.db) == 0


def test_a_retried_feedback_batch_is_stored_once(client: FlaskClient, world: World) -> None:
    _pg_only(world.db)
    _post(client, world, [prediction(f"p{i}", created_at=f"2026-{10 + i % 3:02d}-02T00:00:00Z") for i in range(3)])
    items = [_feedback(f"f{i}", f"p{i % 3}", "card_arrival" if i % 2 else "exchange_rate") for i in range(30)]
    assert _post_feedback(client, world, items) == 201
    assert _post_feedback(client, world, items) == 200  # the retry: every key already exists, in whatever month
    assert _post_feedback(client, world, items[:1]) == 200  # the single-item path
    assert _post_feedback(client, world, [dict(items[0], label="card_linking")]) == 409  # same id, other content
    assert _post_feedback(client, world, [items[1], _feedback("f-new", "p0")]) == 201  # one old, one new
    assert _count(world.db, "SELECT count(*) FROM feedback") == 31
    assert _count(world.db, "SELECT count(DISTINCT id) FROM feedback") == 31
    assert _count(world.db, "SELECT count(*) FROM feedback_keys") == 31
    assert _count(world.db, "SELECT count(*) FROM feedback f JOIN feedback_keys k ON k.feedback_id = f.id") == 31
    assert _count(world.db, "SELECT sum(feedback_count) FROM predictions") == 31
    assert _astray(world.db) == 0


def test_reviews_and_rule_votes_keep_their_keys(client: FlaskClient, world: World) -> None:
    """Feedback written outside ingest claims its key too: a reviewer's decision, a labeling rule's votes; a rule's
    votes removed with it free their keys, so the rule can vote again."""
    rules = {"rules": [{"name": "waiting", "label": "card_arrival", "kind": "keywords", "keywords": ["waiting"]}]}
    admin = world.auth(world.admin)
    assert client.put("/v1/tasks/intent/rules", json=rules, headers=admin).status_code == 200
    _post(client, world, [prediction(f"r{m}", created_at=f"2026-{m:02d}-05T00:00:00Z") for m in (10, 11, 12)])
    review = client.post(
        "/v1/review/r11", json={"decision": "relabel", "label": "exchange_rate"}, headers=world.auth(world.acme_rw)
    )
    assert review.status_code == 201, review.get_json()
    assert _count(world.db, "SELECT count(*) FROM feedback WHERE source = 'rule'") == 3
    assert _astray(world.db) == 0
    assert client.put("/v1/tasks/intent/rules", json={"rules": []}, headers=admin).status_code == 200
    assert rules_backfill(world.db) == 0  # the votes of the removed rule go
    assert _count(world.db, "SELECT count(*) FROM feedback WHERE source = 'rule'") == 0
    assert client.put("/v1/tasks/intent/rules", json=rules, headers=admin).status_code == 200
    assert rules_backfill(world.db) == 3  # and it votes again, under the same ids
    assert _count(world.db, "SELECT count(*) FROM feedback") == 4
    if world.db.engine.dialect.name == "postgresql":
        assert _count(world.db, "SELECT count(*) FROM feedback_keys") == 4
        assert _where(world.db, "~rule:waiting:" + str(_id(world.db, "r12")), "feedback") == "feedback_y2026m12"


def _id(db: Database, client_id: str) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT id FROM predictions WHERE client_id = :c"), {"c": client_id}).scalar_one())


def test_erasure_removes_the_feedback_and_frees_its_keys(client: FlaskClient, world: World) -> None:
    _post(client, world, [prediction(f"e{m}", created_at=f"2026-{m:02d}-05T00:00:00Z") for m in (11, 12)])
    _post_feedback(client, world, [_feedback("fe11", "e11"), _feedback("fe12", "e12")])
    erased = client.post("/v1/erasure", json={"prediction_ids": ["e11"]}, headers=world.auth(world.acme_ingest))
    assert erased.status_code == 200 and erased.get_json()["feedback"] == 1
    assert _count(world.db, "SELECT count(*) FROM feedback") == 1
    if world.db.engine.dialect.name == "postgresql":
        assert _count(world.db, "SELECT count(*) FROM feedback_keys") == 1
    _post(client, world, [prediction("e11", created_at="2026-12-01T00:00:00Z")])  # the ids are free again
    assert _post_feedback(client, world, [_feedback("fe11", "e11")]) == 201
    assert _astray(world.db) == 0


def test_reading_a_predictions_feedback_reads_one_month(client: FlaskClient, world: World) -> None:
    """How the hot paths read feedback (the effective label, the review queue, exports, training-set assembly,
    erasure): by prediction id and its month, which PostgreSQL prunes to one partition and its index; and joined to
    the predictions on both, which prunes each probe of a nested loop to the prediction's month."""
    _pg_only(world.db)
    _post(client, world, [prediction("x", created_at="2026-12-20T10:00:00Z")])
    _post_feedback(client, world, [_feedback("fx", "x")])
    with world.db.session() as session:
        pid, created = session.execute(select(Prediction.id, Prediction.created_at)).one()
        # tiny tables: ask which plan an index allows, as at scale
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = _explain(session, select(Feedback.label).where(partitions.feedback_of([(pid, created)])))
        for method in ("material", "hashjoin", "mergejoin"):
            session.execute(text(f"SET LOCAL enable_{method} = off"))
        probe = (
            select(func.count())
            .select_from(Prediction)
            .join(Feedback, partitions.feedback_joins_prediction())
            .where(Prediction.client_id == "x")
        )
        probed = _explain(session, probe, analyze=True)
    assert set(re.findall(r" on (feedback\w*)", plan)) == {"feedback_y2026m12"} and "Index Scan" in plan, plan
    executed = {
        name
        for line in probed.splitlines()
        if "never executed" not in line
        for name in re.findall(r" on (feedback\w*)", line)
    }
    assert executed == {"feedback_y2026m12"}, probed


def _explain(session: Session, query: Select[Any], *, analyze: bool = False) -> str:
    compiled = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    options = "(ANALYZE, COSTS OFF) " if analyze else ""
    return "\n".join(session.execute(text(f"EXPLAIN {options}{compiled}")).scalars())


def test_retention_drops_whole_months_and_what_points_at_them(client: FlaskClient, world: World) -> None:
    _pg_only(world.db)
    with world.db.session() as session:
        for month in (9, 10, 11, 12):
            partitions.create_month(session, datetime(2026, month, 1, tzinfo=UTC))
    _post(client, world, [prediction(f"m{m}", created_at=f"2026-{m:02d}-10T00:00:00Z") for m in (9, 10, 11, 12)])
    _post(client, world, [prediction("ancient", created_at="2018-01-01T00:00:00Z")])
    _post_feedback(client, world, [_feedback(f"f{m}", f"m{m}") for m in (9, 10, 11)] + [_feedback("fa", "ancient")])
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
    assert result["feedback"] == 3  # September's and October's feedback partitions whole, the ancient row's as rows
    with world.db.session() as session:
        assert session.get(ModelVersion, model.id).tainted_rows == 1  # type: ignore[union-attr]
        audit = session.scalars(select(Erasure).where(Erasure.reason == "retention")).all()
        left_months = {p.name for p in partitions.partitions(session)}
        left_months |= {p.name for p in partitions.partitions(session, "feedback")}
    assert not {"predictions_y2026m09", "predictions_y2026m10", "feedback_y2026m09", "feedback_y2026m10"} & left_months
    assert {"predictions_y2026m11", "predictions_y2026m12", "feedback_y2026m11", "feedback_y2026m12"} <= left_months
    months = sorted(a.counts["partition"] for a in audit if "partition" in a.counts)
    assert months == ["predictions_y2026m09", "predictions_y2026m10"]
    assert next(a.id_hashes for a in audit if "partition" not in a.counts)  # the row erased as rows: its id hash
    with world.db.engine.connect() as conn:
        left = sorted(conn.execute(text("SELECT client_id FROM predictions")).scalars())
        keys = sorted(conn.execute(text("SELECT client_id FROM prediction_keys")).scalars())
        feedback = sorted(conn.execute(text("SELECT client_id FROM feedback")).scalars())
        feedback_keys = sorted(conn.execute(text("SELECT client_id FROM feedback_keys")).scalars())
        lineage = conn.execute(text("SELECT count(*) FROM model_training_rows")).scalar_one()
    assert left == keys == ["m11", "m12"]
    assert feedback == feedback_keys == ["f11"] and lineage == 0
    _post(client, world, [prediction("m9", created_at="2026-12-01T00:00:00Z")])  # its key is free again
    assert _post_feedback(client, world, [_feedback("f9", "m9")]) == 201  # and its feedback's


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


def _tenant_and_task(conn: Connection) -> tuple[int, int]:
    """A tenant and a task inserted by hand, for a database at an old revision (no models of today to use)."""
    tid = conn.execute(
        text("INSERT INTO tenants (slug, name, created_at) VALUES ('a', 'A', now()) RETURNING id")
    ).scalar_one()
    task = conn.execute(
        text(
            "INSERT INTO tasks (name, labels, label_descriptions, description, created_at) "
            "VALUES ('t', '[\"x\", \"y\"]', '{}', '', now()) RETURNING id"
        )
    ).scalar_one()
    return int(tid), int(task)


def test_upgrading_an_unpartitioned_database_keeps_every_row(scratch_pg: str) -> None:
    db = Database(scratch_pg)
    cfg = alembic_config(scratch_pg)
    command.upgrade(cfg, "0006")
    command.upgrade(cfg, "0005")
    with db.engine.begin() as conn:
        tid, task = _tenant_and_task(conn)
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
        feedback_before = conn.execute(text(FEEDBACK_SUM)).scalar_one()
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
        feedback_after = conn.execute(text(FEEDBACK_SUM)).scalar_one()
        feedback_keys = conn.execute(text("SELECT count(*) FROM feedback_keys")).scalar_one()
        feedback_where = dict(
            conn.execute(
                text("SELECT tableoid::regclass::text LIKE '%default', count(*) FROM feedback GROUP BY 1")
            ).all()
        )
        feedback_nextval = conn.execute(text("SELECT nextval('feedback_id_seq')")).scalar_one()
        feedback_months = len(partitions.partitions(conn, "feedback"))
    assert after == before and keys == 500 and joined == 500
    assert months >= 17  # Jan 2025 to May 2026 hold rows; the months up to now and three ahead are created too
    assert nextval == 501  # the id sequence carried over
    assert feedback_after == feedback_before and feedback_keys == 500 and feedback_nextval == 501
    assert feedback_where == {False: 500} and feedback_months == months  # each row in its prediction's month
    assert _astray(db) == 0
    command.downgrade(cfg, "0006")  # and back: one plain table again, rows intact
    with db.engine.connect() as conn:
        assert not partitions.is_partitioned(conn)
        assert conn.execute(text("SELECT sum(hashtext(client_id || id)) FROM predictions")).scalar_one() == before
        assert conn.execute(text(FEEDBACK_SUM)).scalar_one() == feedback_before
        assert conn.execute(text("SELECT relkind FROM pg_class WHERE relname = 'feedback'")).scalar_one() == "r"
    db.dispose()


def test_upgrading_partitioned_predictions_partitions_their_feedback(scratch_pg: str) -> None:
    """Revision 0012 on a database whose predictions are already partitioned (0008) and whose feedback is one
    table: every feedback row goes to its prediction's month (one whose prediction is gone keeps its own date), the
    keys and the id sequence come along, and the unique key still holds afterwards."""
    db = Database(scratch_pg)
    cfg = alembic_config(scratch_pg)
    command.upgrade(cfg, "0011")
    with db.engine.begin() as conn:
        conn.execute(  # a month of 2017 has a partition: its feedback must go to that month too
            text(
                "CREATE TABLE predictions_y2017m08 PARTITION OF predictions "
                "FOR VALUES FROM ('2017-08-01T00:00:00+00:00') TO ('2017-09-01T00:00:00+00:00')"
            )
        )
        tid, task = _tenant_and_task(conn)
        conn.execute(
            text(
                "INSERT INTO predictions (tenant_id, task_id, client_id, text, label, confidence, created_at, "
                "received_at, content_hash, bucket, label_discarded, feedback_count) "
                "SELECT :tenant, :task, 'c' || i, 'text ' || i, 'x', 0.9, "
                "timestamptz '2017-06-20' + i * interval '3 day', now(), 'h', i % 100, false, 0 "
                "FROM generate_series(1, 300) AS i"
            ),
            {"tenant": tid, "task": task},
        )
        conn.execute(text("INSERT INTO prediction_keys SELECT tenant_id, client_id, id, created_at FROM predictions"))
        conn.execute(
            text(
                "INSERT INTO feedback (tenant_id, prediction_id, client_id, label, source, created_at, received_at, "
                "content_hash) SELECT tenant_id, id, 'f' || id || '-' || k, 'y', 'end_user', now(), now(), 'h' "
                "FROM predictions, generate_series(1, 2) AS k"
            )
        )
        conn.execute(  # a row whose prediction is gone (there is no foreign key since 0008)
            text(
                "INSERT INTO feedback (tenant_id, prediction_id, client_id, label, source, created_at, received_at, "
                "content_hash) VALUES (:tenant, 999999, 'orphan', 'y', 'end_user', '2017-08-02', now(), 'h')"
            ),
            {"tenant": tid},
        )
        before = conn.execute(text(FEEDBACK_SUM)).scalar_one()
    command.upgrade(cfg, "0012")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT relkind FROM pg_class WHERE relname = 'feedback'")).scalar_one() == "p"
        assert conn.execute(text(FEEDBACK_SUM)).scalar_one() == before
        assert conn.execute(text("SELECT count(*) FROM feedback_keys")).scalar_one() == 601
        where = dict(
            conn.execute(
                text("SELECT client_id, tableoid::regclass::text FROM feedback WHERE client_id LIKE 'f1-%'")
            ).all()
        )
        orphan = conn.execute(text("SELECT tableoid::regclass::text FROM feedback WHERE client_id = 'orphan'"))
        nextval = conn.execute(text("SELECT nextval('feedback_id_seq')")).scalar_one()
    assert where == {"f1-1": "feedback_default", "f1-2": "feedback_default"}  # 2017-06-23: no month of its own
    assert orphan.scalar_one() == "feedback_y2017m08"
    assert nextval == 602
    assert _astray(db) == 0
    command.downgrade(cfg, "0011")
    with db.engine.begin() as conn:
        assert conn.execute(text("SELECT relkind FROM pg_class WHERE relname = 'feedback'")).scalar_one() == "r"
        assert conn.execute(text(FEEDBACK_SUM)).scalar_one() == before
        assert conn.execute(text("SELECT to_regclass('feedback_keys')")).scalar() is None
    with pytest.raises(IntegrityError), db.engine.begin() as conn:  # the unique constraint is back
        conn.execute(
            text(
                "INSERT INTO feedback (tenant_id, prediction_id, client_id, label, source, created_at, received_at, "
                "content_hash) SELECT tenant_id, prediction_id, client_id, label, source, created_at, received_at, "
                "content_hash FROM feedback WHERE client_id = 'orphan'"
            )
        )
    db.dispose()
