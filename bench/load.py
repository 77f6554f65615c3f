"""Load and faults: a mixed workload against ``flywheel serve`` on PostgreSQL, with PostgreSQL restarted mid-run.

    .venv/bin/python bench/load.py                          # 60 s, 8 clients, PostgreSQL restarted at 20 s
    .venv/bin/python bench/load.py --seconds 10 --restart-at 0
    .venv/bin/python bench/load.py --database-url postgresql+psycopg://postgres@127.0.0.1:5433/postgres \\
        --restart-command "su postgres -c '/usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pg/data -w restart -m fast'"

Set-up: a fresh database on the server of ``--database-url`` (dropped at the end, also on failure), ``flywheel db
upgrade``, a tenant and its keys from the command line, a task through the API (banking77's labels and texts from
``../shared/data`` when present, else a small fixed set), then ``flywheel serve`` (2 gthread workers) on a free port.
``POST /v1/predict`` loads the MiniLM encoder in each worker on first use: it is warmed up, and then every operation
runs for ``--warmup`` seconds, before the clock starts.

The workload: ``--clients`` client *processes* (not threads: the clients' own Python work, encoding bodies and httpx's
parsing, must not queue on one GIL, or the waits for it would show up as server latency in p99), each with its own
keep-alive httpx connection, looping with no think time over a weighted mix: single-item ``POST /v1/predictions``,
100-item batches, ``POST /v1/feedback`` for its own earlier predictions, ``POST /v1/predict`` (1–4 inputs),
``GET /v1/predictions/{id}`` and ``GET /v1/predictions?task=…``. Each request is timed on its own; p50/p99 are over
the requests that answered 2xx. Alongside, one ``flywheel_client`` ``BackgroundLogger`` (its own process) logs
``--logger-rate`` predictions a second for the whole run, and a probe in the main process reads one prediction every
100 ms, so the outage is seen at that resolution.

Faults: at ``--restart-at`` seconds PostgreSQL is restarted once (``pg_ctlcluster … restart``). While it is down the
server must answer 503 ``application/problem+json`` with ``Retry-After``, and recover by itself. A 503 of that shape
from a request that started between the restart and ``OUTAGE_GRACE_S`` after PostgreSQL is back counts as expected;
anything else that is not 2xx is an error: a 500, a 503 without ``Retry-After`` or outside that window, a 404 on a
read of an acknowledged id, a 409 (no operation here re-uses an id with other content), a dropped connection or a
timeout. Writers retry a 503 or a connection error after ``Retry-After`` with the same ids (idempotent), so that the
database must end up holding exactly what was acknowledged: every acknowledged id, and every id the logger accepted,
is looked up in PostgreSQL directly, and the logger must have dropped and been refused nothing.

Exit status 1 when there was an error or anything was lost. Latency figures on a shared machine are noisy: they are
reported, never asserted (the target, p99 of a single-item log ≤ 50 ms, is printed as met or missed).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import multiprocessing
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"
TASK = "load-intent"
TENANT = "loadco"
FALLBACK_LABELS = ["card_arrival", "card_linking", "lost_or_stolen_card", "exchange_rate", "refund_not_showing_up"]
FALLBACK_TEXTS = [
    "I am still waiting on my card?",
    "How do I link my new card to the app?",
    "My wallet was stolen last night, please block my card",
    "What exchange rate will I get for euros?",
    "The refund from the shop is still not in my account",
]

#: The mix: operation -> weight (each client draws one per loop).
MIX = {"log_single": 40, "log_batch": 4, "feedback": 16, "predict": 8, "get": 16, "list": 16}
BATCH_ITEMS = 100
#: A 503 from a request started up to this long after PostgreSQL is back still counts as the outage's.
OUTAGE_GRACE_S = 5.0
#: Writers keep retrying a write this long after the run's end before counting it as an error.
GIVE_UP_AFTER_S = 60.0
PROBE_INTERVAL_S = 0.1
#: Model warm-up: rounds of concurrent predicts until this many rounds in a row all answered within this long
#: (loading the encoder takes longer; a served predict, even on a busy shared machine, far less).
WARM_ROUNDS, WARM_MAX_S = 3, 3.0

# A record of one request: (operation, start, end, status, note). Times are time.perf_counter() (CLOCK_MONOTONIC on
# Linux: comparable across the processes). status 0: no answer (connection error, timeout; note names it).
# note for a 503: "503ok" (problem+json with Retry-After) or what was wrong with it.
Record = tuple[str, float, float, int, str]


# --- data ---------------------------------------------------------------------------------------------------------


def load_data() -> tuple[list[str], list[str], str]:
    """The task's labels and the texts to send: banking77 when ../shared/data has it, else a small fixed set."""
    if DATA.exists():
        with DATA.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return sorted({r["label"] for r in rows}), [r["text"] for r in rows], f"banking77 ({DATA})"
    return FALLBACK_LABELS, FALLBACK_TEXTS, "a fixed set of 5 labels (../shared/data/banking77 is absent)"


def prediction_item(pid: str, rng: random.Random, labels: list[str], texts: list[str]) -> dict[str, Any]:
    label, other = rng.sample(labels, 2)
    return {
        "id": pid,
        "task": TASK,
        "text": rng.choice(texts),
        "label": label,
        "confidence": 0.82,
        "probabilities": {label: 0.82, other: 0.18},
        "model_version": "load-1",
        "metadata": {"channel": "load"},
    }


# --- set-up and tear-down -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_database(base_url: str) -> str:
    name = f"flywheel_load_{os.getpid()}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def drop_database(base_url: str, url: str) -> None:
    name = make_url(url).database
    deadline = time.monotonic() + 30  # PostgreSQL may still be coming back from the restart
    while True:
        admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                print(f"could not drop database {name}: {exc}", file=sys.stderr)
                return
            time.sleep(1)
        finally:
            admin.dispose()


def flywheel_command() -> list[str]:
    script = Path(sys.executable).with_name("flywheel")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flywheel.cli"]


def cli(env: dict[str, str], *args: str) -> str:
    """Run the flywheel command line; its last line of standard output (a new key is printed alone there)."""
    out = subprocess.run([*flywheel_command(), *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"flywheel {' '.join(args)} failed:\n{out.stderr}")
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else ""


class Server:
    """``flywheel serve`` on a free port, its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = dict(env, FLYWHEEL_PORT=str(self.port), FLYWHEEL_HOST="127.0.0.1", FLYWHEEL_WORKERS="2")
        self.proc = subprocess.Popen(
            [*flywheel_command(), "serve"], env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"flywheel serve exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            time.sleep(0.2)
        raise SystemExit(f"flywheel serve was not ready within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # gunicorn's master stops its workers
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def warm_up_model(url: str, key: str, texts: list[str], clients: int, timeout: float = 300) -> tuple[float, list[str]]:
    """Concurrent ``POST /v1/predict`` rounds, each request on a new connection (so that every worker gets some),
    until ``WARM_ROUNDS`` rounds in a row answered within ``WARM_MAX_S``: each worker has loaded the encoder.
    Returns the seconds it took and the ids it stored."""
    start = time.monotonic()
    headers = {"Authorization": f"Bearer {key}"}
    counter = iter(range(10**9))
    lock = threading.Lock()

    def one(out: list[float]) -> None:
        with lock:
            n = next(counter)
        body = {"task": TASK, "inputs": [{"id": f"warm-p-{n}", "text": texts[n % len(texts)]}]}
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/predict", json=body, headers=headers, timeout=timeout)
        if r.status_code != 200:
            failures.append(f"warm-up predict answered {r.status_code}: {r.text[:300]}")
        out.append(time.perf_counter() - t0)

    failures: list[str] = []
    fast = 0
    while fast < WARM_ROUNDS:
        if time.monotonic() - start > timeout:
            raise SystemExit("the model did not warm up")
        times: list[float] = []
        threads = [threading.Thread(target=one, args=(times,)) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures or len(times) < clients:
            raise SystemExit(failures[0] if failures else "a warm-up predict got no answer")
        print(f"  warm-up round: slowest predict {max(times):.2f} s", file=sys.stderr, flush=True)
        fast = fast + 1 if max(times) < WARM_MAX_S else 0
    return time.monotonic() - start, [f"warm-p-{i}" for i in range(next(counter))]


# --- the clients --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    url: str
    key: str
    labels: list[str]
    texts: list[str]
    start_at: float  # perf_counter: the warm-up starts (records before `clock_at` are not counted)
    clock_at: float
    end_at: float
    logger_rate: float = 200.0
    mix: dict[str, int] = field(default_factory=lambda: dict(MIX))


@dataclass
class ClientResult:
    name: str
    records: list[Record] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)  # ids acknowledged with a 2xx
    feedback: list[str] = field(default_factory=list)
    unacknowledged: list[str] = field(default_factory=list)  # sent, never acknowledged (gave up): may be stored
    logger: dict[str, Any] = field(default_factory=dict)


def check_503(response: httpx.Response) -> str:
    """'503ok' when the 503 has a Retry-After of whole seconds and the problem+json shape, else what is wrong."""
    retry_after = response.headers.get("Retry-After", "")
    if not retry_after.isdigit():
        return "503 without Retry-After"
    if not response.headers.get("Content-Type", "").startswith("application/problem+json"):
        return "503 not problem+json"
    try:
        body = response.json()
    except ValueError:
        return "503 body not JSON"
    if not (isinstance(body, dict) and body.get("status") == 503 and body.get("title")):
        return "503 body not a problem"
    return "503ok"


class Caller:
    """One client's keep-alive connection; every request is timed and recorded."""

    def __init__(self, plan: Plan, result: ClientResult) -> None:
        self.plan = plan
        self.result = result
        self.http = httpx.Client(
            base_url=plan.url,
            headers={"Authorization": f"Bearer {plan.key}", "Content-Type": "application/json"},
            timeout=30.0,
        )

    def call(self, op: str, method: str, path: str, body: bytes | None = None) -> tuple[int, float | None]:
        """One request: its status (0: no answer) and the Retry-After it carried."""
        t0 = time.perf_counter()
        try:
            response = self.http.request(method, path, content=body)
        except httpx.HTTPError as exc:
            self.result.records.append((op, t0, time.perf_counter(), 0, type(exc).__name__))
            return 0, None
        t1 = time.perf_counter()
        status = response.status_code
        note = check_503(response) if status == 503 else ""
        retry = response.headers.get("Retry-After", "")
        self.result.records.append((op, t0, t1, status, note))
        return status, float(retry) if retry.isdigit() else None

    def write(self, op: str, path: str, body: dict[str, Any]) -> bool:
        """POST until 2xx; a 503 or no answer is retried after Retry-After (1 s without one) with the same body."""
        payload = json.dumps(body).encode()
        give_up = self.plan.end_at + GIVE_UP_AFTER_S
        while True:
            status, retry_after = self.call(op, "POST", path, payload)
            if 200 <= status < 300:
                return True
            if status not in (0, 503) or time.perf_counter() > give_up:
                return False
            time.sleep(retry_after if retry_after is not None else 1.0)

    def read(self, op: str, path: str) -> None:
        status, retry_after = self.call(op, "GET", path)
        if status == 503:  # a well-behaved client waits as told
            time.sleep(retry_after or 1.0)


def run_client(index: int, plan: Plan, out: Any) -> None:
    """One client process: the weighted mix, with no think time, until the end of the run."""
    rng = random.Random(index)
    result = ClientResult(f"client-{index}")
    caller = Caller(plan, result)
    ops, weights = list(plan.mix), list(plan.mix.values())
    labels, texts = plan.labels, plan.texts
    n = 0
    while time.perf_counter() < plan.start_at:
        time.sleep(0.005)
    try:
        while time.perf_counter() < plan.end_at:
            n += 1
            op = rng.choices(ops, weights)[0]
            if op == "feedback" and not result.predictions:
                op = "log_single"
            if op == "log_single":
                item = prediction_item(f"s-{index}-{n}", rng, labels, texts)
                ids = [item["id"]]
                ok = caller.write(op, "/v1/predictions", item)
            elif op == "log_batch":
                items = [prediction_item(f"b-{index}-{n}-{i}", rng, labels, texts) for i in range(BATCH_ITEMS)]
                ids = [it["id"] for it in items]
                ok = caller.write(op, "/v1/predictions", {"predictions": items})
            elif op == "predict":
                inputs = [{"id": f"p-{index}-{n}-{i}", "text": rng.choice(texts)} for i in range(rng.randint(1, 4))]
                ids = [i["id"] for i in inputs]
                ok = caller.write(op, "/v1/predict", {"task": TASK, "inputs": inputs})
            elif op == "feedback":
                fid = f"f-{index}-{n}"
                fb = {
                    "id": fid,
                    "prediction_id": rng.choice(result.predictions),
                    "label": rng.choice(labels),
                    "source": "end_user",
                    "source_id": f"user-{index}",
                }
                if caller.write(op, "/v1/feedback", {"feedback": [fb]}):
                    result.feedback.append(fid)
                continue
            elif op == "get":
                if result.predictions:
                    caller.read(op, f"/v1/predictions/{rng.choice(result.predictions)}")
                continue
            else:
                caller.read(op, f"/v1/predictions?task={TASK}&limit=50")
                continue
            (result.predictions if ok else result.unacknowledged).extend(ids)
    finally:
        caller.http.close()
        out.put(result)


def run_logger(plan: Plan, flush_timeout: float, out: Any) -> None:
    """The background logger's process: ``plan.logger_rate`` predictions a second, steadily, for the whole run."""
    from flywheel_client import Client

    rng = random.Random(10_000)
    result = ClientResult("logger")
    client = Client(plan.url, plan.key, timeout=30.0)
    logger = client.logger(register_atexit=False)
    n = 0
    while time.perf_counter() < plan.start_at:
        time.sleep(0.005)
    try:
        while (now := time.perf_counter()) < plan.end_at:
            due = int((now - plan.start_at) * plan.logger_rate)
            while n < due:
                pid = f"l-{n}"
                if logger.log_prediction(prediction_item(pid, rng, plan.labels, plan.texts)):
                    result.predictions.append(pid)
                else:
                    result.unacknowledged.append(pid)  # refused at once: counted against the logger below
                n += 1
            time.sleep(0.01)
        t0 = time.perf_counter()
        flushed = logger.flush(timeout=flush_timeout)
        result.logger = {"flushed": flushed, "flush_s": time.perf_counter() - t0, **logger.stats()}
        logger.close(timeout=5)
        result.logger["dropped_after_close"] = logger.dropped
    finally:
        client.close()
        out.put(result)


class Probe(threading.Thread):
    """Reads one prediction every ``PROBE_INTERVAL_S`` (no retry, no Retry-After wait): the outage's timeline."""

    def __init__(self, plan: Plan, prediction_id: str) -> None:
        super().__init__(daemon=True)
        self.plan = plan
        self.path = f"/v1/predictions/{prediction_id}"
        self.result = ClientResult("probe")

    def run(self) -> None:
        caller = Caller(self.plan, self.result)
        next_at = self.plan.start_at
        while next_at < self.plan.end_at:
            time.sleep(max(0.0, next_at - time.perf_counter()))
            caller.call("probe", "GET", self.path)
            next_at += PROBE_INTERVAL_S
        caller.http.close()


# --- the report ---------------------------------------------------------------------------------------------------


@dataclass
class Outage:
    began: float  # the restart command was issued
    returned: float  # and returned
    command_rc: int
    down: float | None  # PostgreSQL first refused a connection (PostgresWatch)
    up: float | None  # and first accepted one again

    @property
    def back(self) -> float:
        """When PostgreSQL accepted connections again (the command may return later than that)."""
        return self.up if self.up is not None else self.returned


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))  # nearest rank
    return sorted_values[k]


def is_expected_503(record: Record, outage: Outage | None) -> bool:
    _op, t0, t1, status, note = record
    return (
        status == 503
        and note == "503ok"
        and outage is not None
        and t1 >= outage.began
        and t0 <= outage.back + OUTAGE_GRACE_S
    )


def report(records: list[Record], seconds: float, outage: Outage | None, clock_at: float) -> int:
    """Print the table and the outage; returns the number of errors."""
    order = [*MIX, "probe"]
    print(
        f"\n{'operation':<12}{'count':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'503 exp.':>10}{'errors':>8}"
    )
    total_errors = 0
    error_kinds: dict[str, int] = {}
    for op in order:
        mine = [r for r in records if r[0] == op]
        ok = sorted((r[2] - r[1]) * 1000 for r in mine if 200 <= r[3] < 300)
        expected = sum(1 for r in mine if is_expected_503(r, outage))
        errors = [r for r in mine if not 200 <= r[3] < 300 and not is_expected_503(r, outage)]
        for r in errors:
            kind = f"{r[0]}: {r[3] or 'no answer'} {r[4]}".strip()
            error_kinds[kind] = error_kinds.get(kind, 0) + 1
        total_errors += len(errors)
        print(
            f"{op:<12}{len(ok):>8,}{len(ok) / seconds:>9.1f}{percentile(ok, 50):>9.1f}{percentile(ok, 99):>9.1f}"
            f"{(ok[-1] if ok else float('nan')):>9.1f}{expected:>10}{len(errors):>8}"
        )
    everything = [r for r in records if r[0] != "probe" and 200 <= r[3] < 300]
    print(f"{'all (mix)':<12}{len(everything):>8,}{len(everything) / seconds:>9.1f}")
    for kind, count in sorted(error_kinds.items()):
        print(f"  error: {kind} × {count}")

    singles = [r for r in records if r[0] == "log_single" and 200 <= r[3] < 300]
    if outage is not None:
        recovered = outage_report(records, outage, clock_at)
        calm = sorted(
            (r[2] - r[1]) * 1000 for r in singles if r[2] < outage.began or r[1] > max(recovered, outage.back) + 1
        )
        p99_calm = percentile(calm, 99)
        p99_all = percentile(sorted((r[2] - r[1]) * 1000 for r in singles), 99)
        verdict = "met" if p99_calm <= 50 else "missed"
        print(
            f"\nsingle-item log p99: {p99_calm:.1f} ms outside the outage (restart → recovery + 1 s), "
            f"{p99_all:.1f} ms over the whole run; target ≤ 50 ms: {verdict}"
        )
    else:
        p99 = percentile(sorted((r[2] - r[1]) * 1000 for r in singles), 99)
        print(f"\nsingle-item log p99: {p99:.1f} ms; target ≤ 50 ms: {'met' if p99 <= 50 else 'missed'}")
    return total_errors


def outage_report(records: list[Record], outage: Outage, clock_at: float) -> float:
    """Print the outage's timeline (seconds from the restart command); returns when the service recovered."""

    def rel(t: float) -> str:
        return f"+{t - outage.began:.2f} s"

    served_503 = sorted((r for r in records if r[3] == 503 and r[2] >= outage.began), key=lambda r: r[2])
    after = [r for r in records if 200 <= r[3] < 300 and r[1] >= outage.began]
    print(
        f"\noutage: `restart` issued at {outage.began - clock_at:.1f} s into the run; it returned at "
        f"{rel(outage.returned)} (exit status {outage.command_rc})"
    )
    if outage.down is not None and outage.up is not None:
        print(
            f"  PostgreSQL refused connections from {rel(outage.down)} and accepted them again at {rel(outage.up)} "
            f"({outage.up - outage.down:.2f} s; polled every 50 ms)"
        )
    else:
        print("  PostgreSQL was never seen refusing a connection (polled every 50 ms)")
    if not served_503:
        print("  the server answered no 503 after the restart")
        recovered = min((r[2] for r in after), default=outage.back)
        print(f"  first 2xx from a request started after the restart: {rel(recovered)}")
        return recovered
    first, last = served_503[0][2], served_503[-1][2]
    shaped = sum(1 for r in served_503 if r[4] == "503ok")
    recovered = min((r[2] for r in after if r[1] >= first), default=float("nan"))
    fully = min((r[2] for r in after if r[1] >= last), default=float("nan"))
    print(
        f"  503s: {len(served_503)} answered from {rel(first)} to {rel(last)} ({last - first:.2f} s); "
        f"{shaped} of them problem+json with Retry-After"
    )
    print(
        f"  recovered by itself: first 2xx after the first 503 at {rel(recovered)} "
        f"({recovered - outage.back:+.2f} s from PostgreSQL accepting again); no 503 after {rel(last)}, "
        f"first 2xx after that at {rel(fully)}"
    )
    late = [r for r in served_503 if r[1] > outage.back]
    if late:
        print(f"  {len(late)} 503(s) from requests started after PostgreSQL was back (connections it had dropped)")
    return recovered


def loss_check(url: str, results: list[ClientResult]) -> bool:
    """Every acknowledged id stored exactly once, and the logger lost nothing; prints the comparison."""
    expected_predictions: set[str] = set()
    expected_feedback: set[str] = set()
    unacknowledged: set[str] = set()
    for r in results:
        expected_predictions.update(r.predictions)
        expected_feedback.update(r.feedback)
        unacknowledged.update(r.unacknowledged)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tenant = conn.execute(text("SELECT id FROM tenants WHERE slug = :s"), {"s": TENANT}).scalar_one()
            stored_p: dict[str, int] = dict(
                conn.execute(
                    text("SELECT client_id, count(*) FROM predictions WHERE tenant_id = :t GROUP BY client_id"),
                    {"t": tenant},
                ).all()
            )
            stored_f: dict[str, int] = dict(
                conn.execute(
                    text("SELECT client_id, count(*) FROM feedback WHERE tenant_id = :t GROUP BY client_id"),
                    {"t": tenant},
                ).all()
            )
    finally:
        engine.dispose()
    ok = True
    print("\nloss check (PostgreSQL queried directly after the logger's flush):")
    for kind, expected, stored in (
        ("predictions", expected_predictions, stored_p),
        ("feedback", expected_feedback, stored_f),
    ):
        missing = expected - stored.keys()
        twice = [k for k, c in stored.items() if c != 1]
        extra = stored.keys() - expected - unacknowledged
        print(
            f"  {kind:<12} acknowledged {len(expected):>8,}   stored {sum(stored.values()):>8,}"
            f"   missing {len(missing)}   stored more than once {len(twice)}   stored but never sent {len(extra)}"
        )
        if missing:
            print(f"    missing, e.g.: {sorted(missing)[:5]}")
        ok = ok and not missing and not twice and not extra
    by_writer: dict[str, int] = {}
    for r in results:
        kind = "logger" if r.name == "logger" else "direct writers"
        by_writer[kind] = by_writer.get(kind, 0) + len(r.predictions)
    print("  of the predictions: " + ", ".join(f"{k} {v:,}" for k, v in by_writer.items()))
    if unacknowledged:  # not a loss (never acknowledged), but each is an error in the table above
        stored_anyway = len(unacknowledged & stored_p.keys())
        print(f"  sent but never acknowledged (writers gave up): {len(unacknowledged)} ({stored_anyway} stored)")
    logged = next((r for r in results if r.name == "logger"), None)
    if logged is not None:
        logger = logged.logger
        print(
            f"  logger: accepted {len(logged.predictions):,} (refused at once {len(logged.unacknowledged)}), "
            f"sent {logger['sent']:,} (duplicates {logger['duplicates']}), rejected {logger['rejected']}, "
            f"dropped {logger['dropped_after_close']}, retries {logger['retries']}, pending {logger['pending']}; "
            f"flush {'completed' if logger['flushed'] else 'TIMED OUT'} in {logger['flush_s']:.1f} s"
        )
        ok = ok and logger["flushed"] and logger["rejected"] == 0 and logger["dropped_after_close"] == 0
    print(f"  {'nothing lost' if ok else 'LOSS OR MISMATCH'}")
    return ok


# --- the run ------------------------------------------------------------------------------------------------------


class PostgresWatch(threading.Thread):
    """Connects to PostgreSQL every ``interval`` seconds: when it first refused, and when it accepted again."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        u = make_url(url)
        self.conninfo: dict[str, Any] = {
            "host": u.host or "127.0.0.1",
            "port": u.port or 5432,
            "user": u.username,
            "password": u.password,
            "dbname": u.database,
            "connect_timeout": 2,
        }
        self.interval = interval
        self.stop = threading.Event()
        self.down: float | None = None
        self.up: float | None = None

    def run(self) -> None:
        import psycopg

        while not self.stop.is_set():
            try:
                psycopg.connect(**self.conninfo).close()
                if self.down is not None:
                    self.up = time.perf_counter()
                    return
            except psycopg.Error:
                if self.down is None:
                    self.down = time.perf_counter()
            self.stop.wait(self.interval)


def restart_postgres(command: list[str], at: float, url: str) -> Outage:
    time.sleep(max(0.0, at - time.perf_counter()))
    watch = PostgresWatch(url)
    watch.start()
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    returned = time.perf_counter()
    if done.returncode != 0:
        print(f"{shlex.join(command)} exited with {done.returncode}:\n{done.stderr}", file=sys.stderr)
    watch.join(timeout=30)
    watch.stop.set()
    return Outage(began, returned, done.returncode, watch.down, watch.up)


def default_restart_command() -> str:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else ["15"]
    return f"pg_ctlcluster --skip-systemctl-redirect {versions[-1]} main restart"


@contextlib.contextmanager
def environment(base_url: str) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A fresh database and a temporary folder (artifacts, the server's log), both removed afterwards."""
    url = create_database(base_url)
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-load-"))
    env = dict(
        os.environ,
        FLYWHEEL_DATABASE_URL=url,
        FLYWHEEL_ARTIFACTS_DIR=str(tmp / "artifacts"),
        FLYWHEEL_LOG_LEVEL="WARNING",
        FLYWHEEL_SECRET_KEY="load-bench",
    )
    try:
        yield url, env, tmp
    finally:
        drop_database(base_url, url)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured run")
    parser.add_argument("--clients", type=int, default=8, help="client processes")
    parser.add_argument("--restart-at", type=float, default=20.0, help="seconds into the run; 0: no restart")
    parser.add_argument(
        "--database-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a database on the PostgreSQL server to use (a fresh database is created beside it)",
    )
    parser.add_argument(
        "--restart-command", default=None, help="restarts that server (default: pg_ctlcluster … main restart)"
    )
    parser.add_argument("--logger-rate", type=float, default=200.0, help="predictions a second through the logger")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of the mix before the clock starts")
    parser.add_argument(
        "--mix", default="", help=f"weights to change, e.g. predict=0,log_single=50 (default: {MIX})", metavar="OP=W,…"
    )
    args = parser.parse_args()
    if not args.database_url.startswith("postgresql"):
        raise SystemExit("--database-url must be a PostgreSQL URL")
    if args.restart_at and args.restart_at >= args.seconds:
        raise SystemExit("--restart-at must fall within --seconds")
    restart = shlex.split(args.restart_command or default_restart_command())
    mix = dict(MIX)
    for part in filter(None, args.mix.split(",")):
        op, _, weight = part.partition("=")
        if op not in MIX or not weight.isdigit():
            raise SystemExit(f"--mix: '{part}' is not OP=WEIGHT with OP one of {', '.join(MIX)}")
        mix[op] = int(weight)
    args.mix = mix
    labels, texts, source = load_data()

    with environment(args.database_url) as (url, env, tmp):
        cli(env, "db", "upgrade")
        cli(env, "tenants", "create", TENANT, "--name", "Load Co")
        admin = cli(env, "keys", "create", "--admin")
        key = cli(env, "keys", "create", "--tenant", TENANT, "--scopes", "ingest,read")
        server = Server(env, tmp / "server.log")
        try:
            server.wait_ready()
            r = httpx.post(
                f"{server.url}/v1/tasks",
                json={"name": TASK, "labels": labels, "description": "load test"},
                headers={"Authorization": f"Bearer {admin}"},
                timeout=120,
            )
            if r.status_code != 201:
                raise SystemExit(f"POST /v1/tasks answered {r.status_code}: {r.text[:300]}")
            warm_s, warm_ids = warm_up_model(server.url, key, texts, args.clients) if args.mix["predict"] else (0, [])
            print(
                f"flywheel serve (2 gthread workers) at {server.url} on database {make_url(url).database}; task "
                f"'{TASK}' with {len(labels)} labels from {source}; encoder warm in {warm_s:.0f} s",
                flush=True,
            )
            code = run(args, server, key, labels, texts, url, restart, warm_ids)
        except BaseException:
            print(f"\nthe server's log, last lines:\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            server.close()
        if code != 0:
            keep = Path(tempfile.gettempdir()) / f"flywheel-load-{os.getpid()}-server.log"
            shutil.copyfile(server.log_path, keep)
            errors = [line for line in keep.read_text(errors="replace").splitlines() if "ERROR" in line]
            print(f"\nthe server logged {len(errors)} error(s); its whole log: {keep}")
            for line in errors[:10]:
                print(f"  {line[:300]}")
    sys.exit(code)


def run(
    args: argparse.Namespace,
    server: Server,
    key: str,
    labels: list[str],
    texts: list[str],
    url: str,
    restart: list[str],
    stored_before: list[str],
) -> int:
    start_at = time.perf_counter() + 2.0  # the processes have forked and connected by then
    clock_at = start_at + args.warmup
    end_at = clock_at + args.seconds
    plan = Plan(server.url, key, labels, texts, start_at, clock_at, end_at, args.logger_rate, args.mix)
    # The probe's prediction, stored before anything starts.
    probe_id = "probe-0"
    r = httpx.post(
        f"{server.url}/v1/predictions",
        json=prediction_item(probe_id, random.Random(0), labels, texts),
        headers={"Authorization": f"Bearer {key}"},
    )
    if r.status_code != 201:
        raise SystemExit(f"POST /v1/predictions answered {r.status_code}: {r.text[:300]}")

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=run_client, args=(i, plan, out)) for i in range(args.clients)]
    procs.append(ctx.Process(target=run_logger, args=(plan, 120.0, out)))
    for p in procs:
        p.start()
    probe = Probe(plan, probe_id)
    probe.start()
    print(
        f"{args.clients} client processes and a BackgroundLogger ({args.logger_rate:.0f}/s): {args.warmup:.0f} s "
        f"warm-up, then {args.seconds:.0f} s measured"
        + (f"; PostgreSQL restarted at {args.restart_at:.0f} s ({shlex.join(restart)})" if args.restart_at else ""),
        flush=True,
    )
    outage = restart_postgres(restart, clock_at + args.restart_at, url) if args.restart_at else None
    results: list[ClientResult] = [out.get(timeout=args.warmup + args.seconds + GIVE_UP_AFTER_S + 300) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    probe.join(timeout=10)
    results.append(probe.result)
    results.append(ClientResult("set-up", predictions=[*stored_before, probe_id]))

    # The warm-up's requests are not counted; what it stored is checked with the rest.
    records = [rec for res in results for rec in res.records if rec[1] >= clock_at]
    early = [rec for res in results for rec in res.records if rec[1] < clock_at and not 200 <= rec[3] < 300]
    print(f"\nmeasured {args.seconds:.0f} s, {args.clients} clients, mix weights {args.mix}; latency per request")
    errors = report(records, args.seconds, outage, clock_at) + len(early)
    if early:
        print(f"  errors during the warm-up: {len(early)}")
    intact = loss_check(url, results)
    print(f"\nerrors: {errors}; {'nothing lost' if intact else 'something lost'}")
    return 0 if errors == 0 and intact and (outage is None or outage.command_rc == 0) else 1


if __name__ == "__main__":
    main()
