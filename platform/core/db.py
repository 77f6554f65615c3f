"""Engine, session factory and the transactional scope. Nothing connects at import time."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ClauseElement, Connection, DateTime, Engine, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.engine import Compiled, Dialect, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


#: A pooled connection idle longer than this is pinged before use; one in steady use is not.
IDLE_PING_SECONDS = 1.0


class _Liveness:
    """When a server database's connection needs a ping before use: after it has sat idle (the server may have
    restarted or dropped it meanwhile), or when any connection of the engine has been found lost since it was last
    used. A failed ping discards the connection and the pool opens a fresh one.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one more network round trip per request (25–60 µs on
    loopback here, idle to loaded; it was one of the five a single-item ingest made). A connection used a moment ago
    is as good as the request that used it proved; if the server goes away in between, the request fails as any
    request the outage hits does (503, ``Retry-After``), and every other connection is pinged before its next use.
    Pool checkouts are checked here (the listeners below), and so is each request's held connection
    (:class:`HeldConnections`)."""

    def __init__(self, engine: Engine) -> None:
        self.dialect = engine.dialect  # not the engine: the registry below must not keep it alive
        self.lost_at = -math.inf
        event.listen(engine, "invalidate", self._lost)
        event.listen(engine, "checkin", self._idle_from)
        event.listen(engine, "checkout", self._ping_if_idle)
        self._do_rollback = engine.dialect.do_rollback
        engine.dialect.do_rollback = self._rollback_unless_lost  # type: ignore[method-assign]

    def stale(self, idle_since: float | None) -> bool:
        """Whether a connection idle since ``idle_since`` (None: new) must be pinged before use."""
        if idle_since is None:
            return False
        return time.monotonic() - idle_since >= IDLE_PING_SECONDS or idle_since <= self.lost_at

    def ping(self, dbapi_connection: Any) -> None:
        try:
            self.dialect.do_ping(dbapi_connection)
        except self.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"connection failed its ping: {exc}") from exc

    def check(self, dbapi_connection: Any, idle_since: float | None) -> None:
        """DisconnectionError for a connection the driver already knows is closed (no round trip to tell), or for
        a stale one (:meth:`stale`) that fails its ping."""
        if getattr(dbapi_connection, "closed", False):
            raise DisconnectionError("the driver has closed the connection (it was found lost)")
        if self.stale(idle_since):
            self.ping(dbapi_connection)

    def _rollback_unless_lost(self, dbapi_connection: Any) -> None:
        """ROLLBACK, except on a connection the server has dropped: its transaction ended with it, so nothing is
        left to roll back. The request's teardown rolls back what a read left open, after the answer is made; a
        PostgreSQL restart at that moment raised there, and gunicorn answered a bare 500 instead of the answer.
        The connection is closed, so its next use replaces it (:meth:`check`), and the others are pinged."""
        try:
            self._do_rollback(dbapi_connection)
        except self.dialect.loaded_dbapi.Error as exc:
            if not self.dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            self.lost_at = time.monotonic()
            driver = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)  # not the pool's proxy: its
            with contextlib.suppress(Exception):  # close() would check it in under the Connection still using it
                driver.close()

    def _lost(self, _dbapi_connection: Any, _record: Any, _exception: Any) -> None:
        self.lost_at = time.monotonic()

    def _idle_from(self, _dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def _ping_if_idle(self, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        self.check(dbapi_connection, record.info.get("idle_since"))  # DisconnectionError: the pool replaces it


#: Server engines' liveness checks (SQLite's file needs none), and SQLite engines' checkpointers.
_LIVENESS: weakref.WeakKeyDictionary[Engine, _Liveness] = weakref.WeakKeyDictionary()
_CHECKPOINTERS: weakref.WeakKeyDictionary[Engine, WalCheckpointer] = weakref.WeakKeyDictionary()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create the engine: SQLite gets WAL, foreign keys, a busy timeout and explicit BEGIN."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        checkpointer = None
        if parsed.database and parsed.database != ":memory:":
            checkpointer = _CHECKPOINTERS[engine] = WalCheckpointer(parsed.database)
        _configure_sqlite(engine, checkpointer)
        return engine
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    engine = create_engine(url, **kwargs)
    _LIVENESS[engine] = _Liveness(engine)
    return engine


def _configure_sqlite(engine: Engine, checkpointer: WalCheckpointer | None) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINTs and defers BEGIN; take control of it
    # (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL").
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        if checkpointer is not None:  # commits checkpoint only past a far larger log: the background thread does
            cursor.execute(f"PRAGMA wal_autocheckpoint={checkpointer.commit_pages}")
            checkpointer.ensure_running()
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front, so concurrent writers queue instead of failing
        # with "database is locked" when a read transaction tries to upgrade.
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE")  # the driver's own call: a hot-path statement


class WalCheckpointer:
    """Checkpoints a SQLite database's write-ahead log from a background thread, so that commits seldom have to.

    By default the commit that takes the log past 1,000 pages copies them into the database file and syncs it: on a
    stream of single-item ingests, one commit in ~300 took up to 6 ms, and those were half of all commit time
    (measured). This thread runs ``PRAGMA wal_checkpoint(PASSIVE)`` every :attr:`interval` seconds on a connection
    of its own; PASSIVE never waits for readers or writers. The next writer after a complete checkpoint starts the
    log over, but under a steady stream of writes a background checkpoint never quite completes (new frames arrive
    while it copies), and the log would grow without bound: so commits still checkpoint, past :attr:`commit_pages`
    (~40 MB), when they find little left to copy.

    One thread per process, started by the process's first connection: threads do not survive a fork, and gunicorn
    forks its workers from the preloaded app. It ends with the engine (:meth:`stop`, or when it is collected)."""

    interval = 0.5
    commit_pages = 10_000

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid: int | None = None
        self._stop = threading.Event()

    def ensure_running(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        threading.Thread(
            target=_checkpoint_loop, args=(self.path, self.interval, self._stop), name="wal-checkpoint", daemon=True
        ).start()

    def stop(self) -> None:
        self._stop.set()
        self._pid = None

    def __del__(self) -> None:
        self._stop.set()


def _checkpoint_loop(path: str, interval: float, stop: threading.Event) -> None:
    """The checkpointer's thread; it holds no reference to the engine, so that the engine can be collected."""
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        while not stop.wait(interval):
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # e.g. the file was removed; keep trying until stopped
                log.warning("WAL checkpoint failed: %s", exc)
    finally:
        connection.close()


def connection_of(db: Connection | Session) -> Connection:
    """The connection itself, or the session's (which begins the session's transaction)."""
    return db.connection() if isinstance(db, Session) else db


def driver_execute(db: Connection | Session, sql: str, params: Any, *, many: bool = False, alone: bool = False) -> Any:
    """Run ``sql`` on the driver's cursor of the connection (or the session's), in its transaction; returns the
    cursor.

    This skips SQLAlchemy's per-execution work (cache key, parameter and result processing: ~40 µs a statement,
    measured, against ~2 µs on the cursor), so it is only for the few statements every ingest request runs, with
    values already in database form. Driver errors are wrapped as SQLAlchemy wraps them, so the app's error
    handlers (503 for a lost database) see them the same way.

    ``alone``: a statement that needs no other in its transaction (one row written, or one consistent read) may run
    as its own transaction when none is open, in the driver's autocommit: no ``BEGIN`` and no ``COMMIT`` (two of a
    single-item POST's three round trips on PostgreSQL), and on SQLite no write lock for a read. Inside an open
    transaction it joins it, as any statement does."""
    connection = connection_of(db)
    in_transaction = connection.in_transaction()
    alone = alone and not in_transaction
    if not alone and not in_transaction:
        connection.begin()  # as SQLAlchemy's own execute would (autobegin); the driver alone would autocommit
    dialect = connection.dialect
    dbapi_connection: Any = connection.connection.dbapi_connection
    # SQLite's driver autocommits whenever no BEGIN was issued (isolation_level None, make_engine); psycopg by flag.
    autocommit = alone and dialect.name == "postgresql"
    if autocommit:
        dbapi_connection.autocommit = True
    cursor = dbapi_connection.cursor()
    try:
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, dbapi_connection, cursor)
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            sql, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=dialect, ismulti=many
        ) from exc
    finally:
        if autocommit and not connection.invalidated:
            dbapi_connection.autocommit = False
    return cursor


class HotStatement:
    """A fixed SQLAlchemy statement compiled once per dialect and run with :func:`driver_execute`."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, Compiled] = {}

    def cursor(self, db: Connection | Session, params: dict[str, Any], *, alone: bool = False) -> Any:
        """Execute in the transaction of ``db`` (or, ``alone``, as its own when none is open: see
        :func:`driver_execute`); returns the driver's cursor (``fetchone``, ``rowcount``)."""
        connection = connection_of(db)
        dialect = connection.dialect
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = self.statement.compile(dialect=dialect)
        positions = getattr(compiled, "positiontup", None)
        args = tuple(params[k] for k in positions) if positions else params
        return driver_execute(connection, compiled.string, args, alone=alone)


class HeldConnections:
    """Each worker thread's request connection, kept from one request to the next.

    Checking a connection out of the pool for every request and back in cost ~40 µs of CPU per request under
    gunicorn (measured on a single-item ingest: a tenth of its work beyond a no-op POST). A worker thread serves one
    request at a time, so it keeps one connection: each request ends its transaction (the view commits, teardown
    rolls back what is left) and leaves the connection open for the thread's next request. The connection goes back
    to the pool when its thread ends; a server database's connection that sat idle is pinged first, as the pool does
    on checkout (:class:`_Liveness`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._liveness = _LIVENESS.get(engine)
        self._local = threading.local()

    def acquire(self) -> Connection:
        held: _Held | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = _Held(self.engine.connect())
        elif self._liveness is not None and not held.connection.invalidated:  # invalidated: replaced at next use
            try:
                self._liveness.check(held.connection.connection.dbapi_connection, held.idle_since)
            except DisconnectionError:
                held.connection.invalidate()  # its next use checks a fresh connection out of the pool
        held.idle_since = None
        return held.connection

    def release(self) -> None:
        """End the thread's request: roll back what was not committed; the connection stays with the thread."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            if held.connection.in_transaction():
                held.connection.rollback()
            held.idle_since = time.monotonic()


class _Held:
    """A thread's connection; when the thread ends, its thread-local data goes, and the connection back to the pool."""

    __slots__ = ("connection", "idle_since")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.idle_since: float | None = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the pool may be gone already
            self.connection.close()


class Database:
    """The engine, the session factory and the request connections of one application or job."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.held = HeldConnections(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transactional scope: commit on success, roll back on error, close always."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if (checkpointer := _CHECKPOINTERS.get(self.engine)) is not None:
            checkpointer.stop()
