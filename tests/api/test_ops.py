"""Health, readiness, metrics, the OpenAPI document, and a database that is down."""

from __future__ import annotations

import gc
import socket
import sqlite3
import threading
import time

import pytest
from sqlalchemy import column, func, insert, select, table, text
from sqlalchemy.exc import DBAPIError, OperationalError

import flywheel.core.db
from flywheel.app import create_app
from flywheel.core.config import Settings
from flywheel.core.db import Database, HotStatement, WalCheckpointer
from flywheel.models.records import Prediction, Tenant
from flywheel.web.context import get_connection

from support import World, prediction


def test_health_ready_and_metrics(client, world: World) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/v1/predictions", json={"predictions": [prediction("p1")]}, headers=world.auth(world.acme_rw))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'flywheel_rows_ingested_total{kind="prediction"}' in text
    assert "flywheel_http_request_duration_seconds_bucket" in text


def test_readyz_fails_on_a_database_without_the_schema(tmp_path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}"))
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and "migration" in r.json["detail"]


def test_openapi_document_is_generated_from_the_schemas(client) -> None:
    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    post = doc["paths"]["/v1/predictions"]["post"]
    forms = post["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert [f["$ref"].rsplit("/", 1)[1] for f in forms] == ["PredictionBatch", "PredictionIn"]
    item = doc["components"]["schemas"]["PredictionIn"]
    assert set(item["required"]) == {"id", "task", "text", "label", "confidence"}
    assert item["properties"]["confidence"]["maximum"] == 1.0
    assert doc["components"]["schemas"]["PredictionBatch"]["properties"]["predictions"]["maxItems"] == 1000
    assert "/v1/predictions/{prediction_id}" in doc["paths"]
    # Every error an operation can answer is declared, as problem+json; nothing else is (no catch-all "default").
    assert set(post["responses"]) == {"200", "201", "400", "401", "403", "404", "409", "413", "415", "422", "503"}
    assert "application/problem+json" in post["responses"]["422"]["content"]
    assert post["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    page = client.get("/docs")
    assert page.status_code == 200 and b"/v1/predictions" in page.data


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_database_down_is_503_problem_with_retry_after_and_no_traceback() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/flywheel"
    app = create_app(Settings(database_url=url))
    client = app.test_client()
    r = client.post(
        "/v1/predictions", json={"predictions": [prediction("p1")]}, headers={"Authorization": "Bearer fw_x_y"}
    )
    assert r.status_code == 503
    assert r.content_type == "application/problem+json"
    assert r.headers["Retry-After"].isdigit()
    body = r.get_data(as_text=True)
    assert "Traceback" not in body and "psycopg" not in body and "127.0.0.1" not in body
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "message",
    [  # what psycopg said while PostgreSQL restarted under load (bench/load.py), besides "Connection refused"
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: Connection reset by peer',
        "could not send data to server: Broken pipe",
    ],
)
def test_a_database_restarting_is_503_not_500(message: str) -> None:
    app = create_app(Settings(database_url="sqlite://"))

    @app.get("/lost")
    def lost() -> str:
        raise OperationalError("SELECT 1", None, Exception(message))

    r = app.test_client().get("/lost")
    assert r.status_code == 503 and r.headers["Retry-After"].isdigit()


def test_unexpected_errors_are_500_problem_without_details(app, client) -> None:
    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals")

    r = client.get("/boom")
    assert r.status_code == 500 and r.content_type == "application/problem+json"
    assert "secret" not in r.get_data(as_text=True)


def test_hot_statements_raise_database_errors_as_sqlalchemy_does(db) -> None:
    """The key lookup runs on the driver's cursor; its errors must still reach the app's 503/500 handlers."""
    missing = HotStatement(select(column("x")).select_from(table("no_such_table")))
    with db.session() as session, pytest.raises(DBAPIError) as caught:
        missing.cursor(session, {})
    assert "no_such_table" in str(caught.value.orig)


def test_a_connection_the_server_drops_fails_one_request_and_the_pool_heals(
    db, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread's PostgreSQL connection is pinged only after idling or after a loss: not one round trip a request."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the server dropping a connection: PostgreSQL only")
    app = create_app(Settings(database_url=db.url))  # its own pool
    client = app.test_client()
    headers = world.auth(world.acme_rw)

    def post(i: int) -> int:
        return client.post("/v1/predictions", json={"predictions": [prediction(f"d{i}")]}, headers=headers).status_code

    def drop_the_held_connection() -> None:
        with app.test_request_context():  # this thread's request connection, the one the test client's requests use
            pid = get_connection().execute(text("SELECT pg_backend_pid()")).scalar_one()
        with db.engine.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()

    assert post(0) == 201
    drop_the_held_connection()
    assert post(1) == 503  # used a moment ago, not pinged: the request the outage hits
    assert post(2) == 201  # the lost connection was replaced
    monkeypatch.setattr(flywheel.core.db, "IDLE_PING_SECONDS", 0.0)
    drop_the_held_connection()
    assert post(3) == 201  # idle: pinged before use, replaced, no request fails
    with db.session() as session:
        stored = session.scalars(select(Prediction.client_id).where(Prediction.client_id.like("d%"))).all()
        assert sorted(stored) == ["d0", "d2", "d3"]


def test_a_connection_lost_before_the_teardown_rollback_keeps_the_answer(db, world: World) -> None:
    """A read leaves its transaction for the teardown to roll back. When the server drops the connection between
    the answer and that rollback (a PostgreSQL restart, in bench/load.py), the answer stands (the transaction ended
    with the connection) instead of becoming a bare 500, and the next request gets a fresh connection."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the server dropping a connection: PostgreSQL only")
    app = create_app(Settings(database_url=db.url))  # its own pool

    @app.get("/read-then-lose-the-connection")
    def read_then_lose_the_connection() -> dict[str, int]:
        pid = get_connection().execute(text("SELECT pg_backend_pid()")).scalar_one()  # its transaction stays open
        with db.engine.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
            gone = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
            while admin.execute(gone, {"pid": pid}).scalar_one():
                time.sleep(0.01)
        return {"pid": pid}

    client = app.test_client()
    assert client.get("/read-then-lose-the-connection").status_code == 200
    r = client.post("/v1/predictions", json={"predictions": [prediction("after")]}, headers=world.auth(world.acme_rw))
    assert r.status_code == 201  # the closed connection was replaced before use: no request fails


def test_a_worker_thread_keeps_its_connection_and_each_request_ends_its_transaction(
    db: Database, settings: Settings
) -> None:
    own = Database(db.url)  # a pool of its own, to count what is checked out
    app = create_app(settings, db=own)
    seen: list[int] = []

    def two_requests() -> None:
        for i in range(2):
            with app.test_request_context():
                connection = get_connection()
                seen.append(id(connection.connection.driver_connection))
                stored = connection.execute(select(func.count()).select_from(Tenant)).scalar_one()
                assert stored == 0  # the first request's insert was never committed
                assert connection.in_transaction()
                connection.execute(insert(Tenant).values(slug=f"t{i}", name="T"))  # left uncommitted
        assert own.engine.pool.checkedout() == 1  # kept by the thread between its requests

    worker = threading.Thread(target=two_requests)
    worker.start()
    worker.join()
    gc.collect()
    assert seen[0] == seen[1]  # one connection for both requests
    assert own.engine.pool.checkedout() == 0  # the thread ended: its connection went back to the pool
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Tenant)) == 0  # teardown rolled both back
    own.dispose()


def test_sqlite_checkpoints_its_log_in_the_background(tmp_path) -> None:
    path = tmp_path / "wal.db"
    before = sum(t.name == "wal-checkpoint" for t in threading.enumerate())
    db = Database(f"sqlite:///{path}")
    with db.engine.connect() as conn:
        # commits checkpoint only past a far larger log than SQLite's default 1,000 pages
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == WalCheckpointer.commit_pages
        conn.exec_driver_sql("CREATE TABLE t (x)")
        conn.commit()
        for i in range(50):
            conn.exec_driver_sql("INSERT INTO t VALUES (?)", (i,))
            conn.commit()
    assert sum(t.name == "wal-checkpoint" for t in threading.enumerate()) == before + 1

    def in_the_database_file() -> int:
        """Rows in the main file alone (``immutable`` reads ignore the log): they get there only by a checkpoint."""
        reader = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return int(reader.execute("SELECT count(*) FROM t").fetchone()[0])
        except sqlite3.OperationalError:  # the table itself is still only in the log
            return 0
        finally:
            reader.close()

    deadline = time.monotonic() + 10
    while in_the_database_file() < 50 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_the_database_file() == 50
    db.dispose()  # stops its checkpointer
    deadline = time.monotonic() + 10
    while sum(t.name == "wal-checkpoint" for t in threading.enumerate()) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(t.name == "wal-checkpoint" for t in threading.enumerate()) == before


def test_sqlite_log_stays_bounded_under_a_steady_stream_of_commits(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A background checkpoint never completes while commits keep coming; commits past ``commit_pages`` do."""
    monkeypatch.setattr(WalCheckpointer, "commit_pages", 100)  # 400 kB instead of 40 MB, to keep the test short
    path = tmp_path / "steady.db"
    db = Database(f"sqlite:///{path}")
    raw = db.engine.raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    driver.execute("CREATE TABLE t (x)")
    for _ in range(10_000):  # ~20 MB of rows, one commit each, without a pause
        driver.execute("INSERT INTO t VALUES (randomblob(2000))")
    assert path.with_name("steady.db-wal").stat().st_size < 5_000_000
    raw.close()
    db.dispose()


def test_the_pool_has_room_for_a_connection_per_worker_thread(settings: Settings) -> None:
    threads = 20  # more than SQLAlchemy's default pool (5, and 10 more on overflow)
    app = create_app(settings.with_(threads=threads))
    all_in = threading.Barrier(threads, timeout=10)
    failures: list[BaseException] = []

    def request() -> None:
        try:
            with app.test_request_context():
                get_connection()  # checks a connection out of the pool, kept by the thread
                all_in.wait()  # every thread holds its connection at once
        except BaseException as exc:  # reported below
            failures.append(exc)

    workers = [threading.Thread(target=request) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    app.extensions["flywheel"]["db"].dispose()
