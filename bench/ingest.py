"""Ingestion throughput: HTTP through a running gunicorn server vs raw SQL, side by side.

    .venv/bin/python bench/ingest.py                       # SQLite
    .venv/bin/python bench/ingest.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Real text (banking77) is posted in 1,000-item batches and as single items; the client sends bodies serialized
beforehand over one keep-alive connection, so only the server's work is timed, after an untimed warm-up (gunicorn
preloads the app, as ``flywheel serve`` does). The arms take turns over ``--rounds`` rounds and the best round of
each counts, so that a burst of load from elsewhere on a shared machine does not decide a ratio. The baselines: the
same rows inserted with raw SQL (SQLite ``executemany`` in one transaction; PostgreSQL ``COPY``) and a no-op POST
served by the same gunicorn configuration.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"


def load_items(n: int) -> tuple[list[str], list[dict[str, Any]]]:
    with DATA.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    labels = sorted({r["label"] for r in rows})
    items = []
    for i in range(n):
        row = rows[i % len(rows)]
        other = labels[(labels.index(row["label"]) + 1) % len(labels)]
        items.append(
            {
                "id": f"bench-{i}",
                "task": "banking77",
                "text": row["text"],
                "label": row["label"],
                "confidence": 0.82,
                "probabilities": {row["label"]: 0.82, other: 0.18},
                "model_version": "bench-1",
                "created_at": "2026-11-27T01:00:00Z",
                "metadata": {"channel": "chat"},
            }
        )
    return labels, items


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_database(url: str, tmp: Path, synchronous_commit: str = "on") -> str:
    """A new, empty database for one arm of the benchmark."""
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp / f'{uuid.uuid4().hex[:8]}.db'}"
    name = f"flywheel_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = {synchronous_commit}'))
    admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    if url.startswith("sqlite"):
        return
    name = make_url(url).database
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def flywheel(url: str, *args: str) -> str:
    env = dict(os.environ, FLYWHEEL_DATABASE_URL=url)
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def prepare(url: str, labels: list[str]) -> str:
    flywheel(url, "db", "upgrade")
    flywheel(url, "tenants", "create", "bench", "--name", "Bench")
    flywheel(url, "tasks", "create", "banking77", "--labels", ",".join(labels))
    return flywheel(url, "keys", "create", "--tenant", "bench", "--scopes", "ingest")


class Server:
    """gunicorn serving the Flywheel app (plus a no-op POST route for the baseline) on a free port."""

    def __init__(self, url: str, workers: int, threads: int) -> None:
        self.port = free_port()
        env = dict(os.environ, FLYWHEEL_DATABASE_URL=url, FLYWHEEL_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "bench.ingest_app:create_bench_app()",
                "-b",
                f"127.0.0.1:{self.port}",
                "-w",
                str(workers),
                "-k",
                "gthread",
                "--threads",
                str(threads),
                "--preload",  # as `flywheel serve`: workers fork from a loaded app and start ready
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=ROOT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("gunicorn did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def post_all(port: int, path: str, bodies: list[bytes], key: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    for body in bodies:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status not in (200, 201, 204):
            raise SystemExit(f"POST {path} answered {resp.status}")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def _client(port: int, path: str, bodies: list[bytes], key: str, barrier: Any, out: Any) -> None:
    """One client process of :func:`post_concurrently`: connect, wait for the others, post, report (start, end)."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.connect()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    barrier.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    for body in bodies:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status not in (200, 201, 204):
            out.put(f"POST {path} answered {resp.status}")
            return
    out.put((start, time.perf_counter()))
    conn.close()


def post_concurrently(port: int, path: str, bodies: list[bytes], key: str, clients: int) -> float:
    """Seconds for ``clients`` processes, each with its own keep-alive connection, to post ``bodies`` between them
    (from the first one's start to the last one's end). Processes, not threads: the client's own Python work must
    not queue on one GIL."""
    if clients == 1:
        return post_all(port, path, bodies, key)
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(clients), ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(port, path, bodies[i::clients], key, barrier, out)) for i in range(clients)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        raise SystemExit(errors[0])
    return max(end for _, end in results) - min(start for start, _ in results)


def raw_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import hashlib

    from flywheel.domain.holdout import holdout_bucket

    return [
        {
            "tenant_id": 1,
            "task_id": 1,
            "client_id": it["id"],
            "text": it["text"],
            "label": it["label"],
            "confidence": it["confidence"],
            "probabilities": json.dumps(it["probabilities"]),
            "model_version": it["model_version"],
            "metadata": json.dumps(it["metadata"]),
            "created_at": "2026-11-27 01:00:00",
            "received_at": "2026-11-27 01:00:00",
            "content_hash": hashlib.sha256(it["id"].encode()).hexdigest(),
            "bucket": holdout_bucket(it["id"]),
            "effective_label": None,
            "label_discarded": False,
            "feedback_count": 0,
        }
        for it in items
    ]


COLUMNS = [
    "tenant_id",
    "task_id",
    "client_id",
    "text",
    "label",
    "confidence",
    "probabilities",
    "model_version",
    "metadata",
    "created_at",
    "received_at",
    "content_hash",
    "bucket",
    "effective_label",
    "label_discarded",
    "feedback_count",
]


def raw_insert(url: str, items: list[dict[str, Any]]) -> float:
    """The baseline: the same rows with raw SQL, one transaction (SQLite executemany; PostgreSQL COPY)."""
    rows = raw_rows(items)
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(make_url(url).database)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        sql = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        start = time.perf_counter()
        with conn:
            conn.executemany(sql, [tuple(r[c] for c in COLUMNS) for r in rows])
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed
    import psycopg

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY predictions ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(tuple(r[c] for c in COLUMNS))
        conn.commit()
        return time.perf_counter() - start


def statements_alone(url: str, items: list[dict[str, Any]]) -> float:
    """Seconds per item for what a single-item POST asks of the database, with nothing else: from one process, on
    the driver, each item's one-row insert as its own transaction, as the app runs it (the API key comes from the
    app's key cache), with the app's own SQL and connection settings. The no-op POST plus this is the least a single
    POST can cost, so ``noop / (noop + this)`` bounds the single-item ratio from above for any server that commits
    before it answers.
    """
    from flywheel.core.db import make_engine
    from flywheel.domain.ingest import _row_sql, _sqlite_sql
    from flywheel.models.records import Prediction

    table = Prediction.__table__
    rows = raw_rows(items)
    engine = make_engine(url)  # the app's connection settings (SQLite: WAL, synchronous=NORMAL, BEGIN IMMEDIATE)
    raw = engine.raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        if engine.dialect.name == "sqlite":
            insert = _sqlite_sql(table)
            start = time.perf_counter()
            for r in rows:  # the driver autocommits: no BEGIN issued, as the app runs a row alone
                cursor.execute(insert, tuple(r[c] for c in COLUMNS))
        else:
            insert = _row_sql(table)
            driver.autocommit = True  # as the app runs a row alone: no BEGIN, no COMMIT, one round trip
            start = time.perf_counter()
            for r in rows:
                cursor.execute(insert, [r[c] for c in COLUMNS])
            driver.autocommit = False
        return (time.perf_counter() - start) / len(rows)
    finally:
        raw.close()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="sqlite")
    parser.add_argument("--rows", type=int, default=20_000, help="rows for the batched arm and the raw SQL arm")
    parser.add_argument("--singles", type=int, default=2_000, help="single-item POSTs (and no-op POSTs)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="the arms take turns; the best round of each counts")
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        help="client processes posting the single items and the no-ops at once (1: one after another, the latency "
        "view; more: the server's throughput under concurrent backends)",
    )
    parser.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        default="on",
        help="PostgreSQL: 'off' shows the server's own cost without the WAL flush that every commit waits for",
    )
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing: the benchmark needs ../shared/data")
    labels, items = load_items(args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    base = args.database_url

    results: dict[str, list[float]] = {"raw": [], "batched": [], "single": [], "noop": [], "floor": []}
    for r in range(args.rounds):  # raw SQL baselines, each round on a new database
        raw_url = fresh_database(base, tmp, args.synchronous_commit)
        prepare(raw_url, labels)
        results["raw"].append(args.rows / raw_insert(raw_url, items))
        floor_items = [dict(it, id=f"floor-{r}-{it['id']}") for it in items[: args.singles]]
        results["floor"].append(1 / statements_alone(raw_url, floor_items))
        drop_database(base, raw_url)

    # HTTP arms on one server, the arms taking turns in each round
    url = fresh_database(base, tmp, args.synchronous_commit)
    key = prepare(url, labels)
    server = Server(url, args.workers, args.threads)
    try:
        warm = [dict(it, id=f"warm-{it['id']}") for it in items[:1000]]
        # Untimed warm-up: every worker thread's first statements, SQLite's page cache, CPython's caches.
        post_all(server.port, "/v1/predictions", [json.dumps({"predictions": warm[:500]}).encode()], key)
        post_all(server.port, "/v1/predictions", [json.dumps(it).encode() for it in warm[500:]], key)
        post_all(server.port, "/_bench/noop", [b"{}"] * 500, key)
        for r in range(args.rounds):
            renamed = [dict(it, id=f"r{r}-{it['id']}") for it in items]
            batches = [json.dumps({"predictions": renamed[i : i + 1000]}).encode() for i in range(0, len(items), 1000)]
            singles = [
                json.dumps(dict(it, id=f"r{r}-single-{i}")).encode() for i, it in enumerate(renamed[: args.singles])
            ]
            results["batched"].append(args.rows / post_all(server.port, "/v1/predictions", batches, key))
            for arm, path in (("single", "/v1/predictions"), ("noop", "/_bench/noop")):
                elapsed = post_concurrently(server.port, path, singles, key, args.clients)
                results[arm].append(args.singles / elapsed)
    finally:
        server.close()
        drop_database(base, url)

    best = {arm: max(values) for arm, values in results.items()}
    backend = "SQLite (executemany)"
    if base != "sqlite":
        backend = f"PostgreSQL (COPY), synchronous_commit={args.synchronous_commit}"
    print(
        f"\nbackend: {backend}; gunicorn gthread workers={args.workers} threads={args.threads}; "
        f"{args.clients} client(s) for the single items; best of {args.rounds}"
    )
    print(f"{'arm':<34}{'rows/s':>12}{'ratio':>10}   every round")
    for name, arm, base_arm in (
        ("raw SQL, one transaction", "raw", "raw"),
        ("HTTP, 1,000-item batches", "batched", "raw"),
        ("no-op POST (same gunicorn)", "noop", "noop"),
        ("HTTP, single-item POST", "single", "noop"),
    ):
        rounds = ", ".join(f"{v:,.0f}" for v in results[arm])
        print(f"{name:<34}{best[arm]:>12,.0f}{best[arm] / best[base_arm]:>10.2f}   {rounds}")
    floor_us, noop_us = 1e6 / best["floor"], 1e6 / best["noop"]
    print(
        f"\nthe database alone, per single item (the one-row insert, its own transaction; one process, no HTTP): "
        f"{floor_us:,.0f} µs;\nwith the no-op POST's {noop_us:,.0f} µs, no server that commits before answering can "
        f"pass {noop_us / (noop_us + floor_us):.2f}x the no-op here (this run's single POST spent "
        f"{1e6 / best['single'] - noop_us - floor_us:,.0f} µs more)"
    )


if __name__ == "__main__":
    main()
