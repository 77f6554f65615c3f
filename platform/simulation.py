"""The flywheel, replayed: real text as production traffic through a real running server, over simulated days.

Each simulated day, several tenants send traffic through ``POST /v1/predict``; users send feedback on part of it,
late, with a known share of wrong labels (some from one careless source); then the scheduler's own job functions run
on the simulated clock: the label-quality pass, the SLA and drift evaluation, the nightly retraining with its gate.

Three arms replay the same traffic from the same seed on three fresh databases:

- ``cleaned``: noisy feedback, label quality on (label issues are left out of training);
- ``uncleaned``: the same noisy feedback, label quality off;
- ``true_labels``: the same items with their true labels, as the ceiling.

With ``review_budget`` N, a human reviewer decides N labels a day per task in both noisy arms, between the
label-quality pass and the night's training, through ``POST /v1/review/{id}`` with the true label: in ``cleaned``,
the first N items of the review queue in the order ``GET /v1/review`` shows them (the tenants' queues taken in
turn); in ``uncleaned``, which has no queue, N labeled items not yet reviewed, chosen at random (a spot-check).

Each day the shared champion of every arm is scored on the untouched test split.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import numpy as np
import requests
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.core.migrate import upgrade
from flywheel.domain import champions
from flywheel.domain.auth import create_key

log = logging.getLogger(__name__)

ARMS = ("cleaned", "uncleaned", "true_labels")
TASK = "sim-intent"
T0 = datetime(2026, 1, 5, tzinfo=UTC)
STATUS_CODES = {"met": 0, "at_risk": 1, "breached": 2, "insufficient_data": 3}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SimConfig:
    train: Path
    test: Path
    out: Path
    days: int = 7
    daily: int = 500
    feedback_rate: float = 0.5
    noise: float = 0.2
    careless_share: float = 0.25  # of the wrong labels, the share given by one careless source (always wrong)
    tenants: int = 3
    shift: Path | None = None
    shift_day: int = 4
    shift_share: float = 0.5  # of the shifted tenant's traffic from the shift day on
    max_feedback_delay: int = 2  # days
    database_url: str | None = None  # a PostgreSQL server to create the arms' databases on; SQLite files otherwise
    seed: int = 0
    test_limit: int | None = None
    sla_threshold: float = 0.75  # measured against user feedback, which carries the injected noise
    sla_window_days: int = 1  # each simulated day is judged (and checked for drift) on its own traffic
    sla_min_labeled: int = 30
    arms: tuple[str, ...] = ARMS
    review_budget: int = 0  # reviewer decisions per simulated day, per task, in the cleaned and uncleaned arms
    settings: dict[str, Any] = field(default_factory=dict)  # Settings overrides (ladder thresholds, base model…)


@dataclass
class Item:
    id: str
    tenant: str
    day: int
    text: str
    label: str  # the truth
    shifted: bool


@dataclass
class FeedbackPlan:
    item: str
    tenant: str
    day: int  # the day it arrives
    noisy_label: str
    true_label: str
    source_id: str


@dataclass
class Plan:
    labels: list[str]
    items: list[Item]
    feedback: list[FeedbackPlan]
    test_texts: list[str]
    test_labels: list[str]

    @property
    def wrong_ids(self) -> set[str]:
        return {f.item for f in self.feedback if f.noisy_label != f.true_label}


def read_csv(path: Path) -> list[tuple[str, str]]:
    """``text,label`` rows (other columns ignored)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path} must have 'text' and 'label' columns")
        return [(row["text"], row["label"]) for row in reader if row["text"].strip()]


def make_plan(cfg: SimConfig) -> Plan:
    """The whole traffic and feedback schedule, fixed by the seed, shared by every arm."""
    rng = np.random.default_rng(cfg.seed)
    train = read_csv(cfg.train)
    test = read_csv(cfg.test)
    labels = sorted({label for _, label in train})
    shift = read_csv(cfg.shift) if cfg.shift else []
    order = rng.permutation(len(train))
    shift_order = rng.permutation(len(shift)) if shift else np.array([], dtype=int)
    tenants = [f"tenant-{k + 1}" for k in range(cfg.tenants)]
    items: list[Item] = []
    n_plain = n_shift = 0
    for day in range(cfg.days):
        for i in range(cfg.daily):
            tenant = tenants[i % len(tenants)]
            use_shift = (
                bool(shift)
                and tenant == tenants[0]
                and day >= cfg.shift_day
                and rng.random() < cfg.shift_share
                and n_shift < len(shift)
            )
            if use_shift:
                text_, label = shift[shift_order[n_shift]]
                n_shift += 1
            else:
                text_, label = train[order[n_plain % len(order)]]
                n_plain += 1
            items.append(Item(f"d{day}-{i}", tenant, day, text_, label, use_shift))
    feedback: list[FeedbackPlan] = []
    careless_rate = cfg.noise * cfg.careless_share  # share of all feedback that comes from the careless source
    honest_wrong = (cfg.noise - careless_rate) / max(1e-9, 1 - careless_rate)
    for item in items:
        if item.label not in labels or rng.random() >= cfg.feedback_rate:
            continue
        day = item.day + int(rng.integers(0, cfg.max_feedback_delay + 1))
        if day >= cfg.days:
            continue
        careless = rng.random() < careless_rate
        wrong = careless or rng.random() < honest_wrong
        noisy = item.label
        if wrong:
            others = [x for x in labels if x != item.label]
            noisy = others[int(rng.integers(0, len(others)))]
        source_id = "careless-clicker" if careless else f"user-{int(rng.integers(0, 200))}"
        feedback.append(FeedbackPlan(item.id, item.tenant, day, noisy, item.label, source_id))
    test_rows = test[: cfg.test_limit] if cfg.test_limit else test
    return Plan(labels, items, feedback, [t for t, _ in test_rows], [y for _, y in test_rows])


# --- one arm ------------------------------------------------------------------------------------------------------


@contextmanager
def arm_database(cfg: SimConfig, arm: str) -> Iterator[str]:
    """A fresh database for one arm: a SQLite file under ``out``, or a new database on the PostgreSQL server."""
    if not cfg.database_url or cfg.database_url.startswith("sqlite"):
        path = cfg.out / f"{arm}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        return
    name = f"flywheel_sim_{arm}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(cfg.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(cfg.database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Server:
    """The Flywheel web app on a real socket (127.0.0.1, a free port), served from a thread."""

    def __init__(self, settings: Settings, db: Database) -> None:
        from werkzeug.serving import WSGIRequestHandler, make_server

        from flywheel.app import create_app

        class QuietHandler(WSGIRequestHandler):
            def log_request(self, *_args: Any, **_kwargs: Any) -> None:  # the app logs its own requests
                pass

        app = create_app(settings, db=db)
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


class Client:
    """A product backend and a customer-success admin, talking HTTP."""

    def __init__(self, base: str, admin_key: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.admin = admin_key
        self.keys: dict[str, str] = {}

    def call(self, method: str, path: str, key: str, body: Any = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        r = self.http.request(method, self.base + path, json=body, headers={"Authorization": f"Bearer {key}"})
        if r.status_code not in ok:
            raise RuntimeError(f"{method} {path} answered {r.status_code}: {r.text[:500]}")
        return r.json() if r.content and r.headers.get("content-type", "").endswith("json") else None


def _sim_now(day: int, hour: int = 23) -> datetime:
    return T0 + timedelta(days=day, hours=hour)


def run_arm(cfg: SimConfig, plan: Plan, arm: str, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Replay the plan through a fresh system; one metrics row per simulated day."""
    with arm_database(cfg, arm) as url:
        overrides = {
            "artifacts_dir": cfg.out / arm / "artifacts",
            "label_quality_enabled": arm == "cleaned",
            **cfg.settings,
        }
        settings = Settings(database_url=url, log_level="WARNING", **overrides)
        db = Database(url)
        upgrade(db.engine)
        with db.session() as session:
            admin_key = create_key(session, tenant=None, scopes=["admin"], name="simulation")[1]
        server = Server(settings, db)
        try:
            return _replay(cfg, plan, arm, settings, db, Client(server.url, admin_key), progress)
        finally:
            server.close()
            db.dispose()


def _replay(
    cfg: SimConfig,
    plan: Plan,
    arm: str,
    settings: Settings,
    db: Database,
    api: Client,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    from flywheel.models.records import Feedback, Prediction, Task
    from flywheel.models.training import TrainingRun
    from flywheel.monitoring.jobs import run_monitoring
    from flywheel.retrain.jobs import nightly_retrain, process_queue
    from flywheel.scheduler import nightly_pipeline

    tenants = sorted({i.tenant for i in plan.items})
    api.call("POST", "/v1/tasks", api.admin, {"name": TASK, "labels": plan.labels})
    for t in tenants:
        api.call("POST", "/v1/tenants", api.admin, {"slug": t, "name": t.replace("-", " ").title()})
        api.keys[t] = api.call("POST", "/v1/keys", api.admin, {"tenant": t, "scopes": ["ingest", "read"]})["key"]
        sla = {
            "metric": "accuracy",
            "threshold": cfg.sla_threshold,
            "window_days": cfg.sla_window_days,
            "min_labeled": cfg.sla_min_labeled,
        }
        api.call("PUT", f"/v1/slas/{t}/{TASK}", api.admin, sla)
    reviewer = Reviewer(api, tenants, plan, arm, cfg) if cfg.review_budget > 0 and arm != "true_labels" else None

    by_day: dict[int, list[Item]] = defaultdict(list)
    for item in plan.items:
        by_day[item.day].append(item)
    fb_by_day: dict[int, list[FeedbackPlan]] = defaultdict(list)
    for f in plan.feedback:
        fb_by_day[f.day].append(f)

    rows: list[dict[str, Any]] = []
    served = 0
    feedback_sent = 0
    champion_before: int | None = None
    alerts_seen = 0
    last_run = 0
    for day in range(cfg.days):
        stamp = _sim_now(day, 12).isoformat()
        for t in tenants:
            todays = [i for i in by_day[day] if i.tenant == t]
            for start in range(0, len(todays), 256):
                chunk = todays[start : start + 256]
                body = {
                    "task": TASK,
                    "inputs": [{"id": i.id, "text": i.text, "created_at": stamp} for i in chunk],
                }
                out = api.call("POST", "/v1/predict", api.keys[t], body)
                served += len(out["predictions"])
        for t in tenants:
            items = [
                {
                    "id": f"fb-{f.item}",
                    "prediction_id": f.item,
                    "label": f.true_label if arm == "true_labels" else f.noisy_label,
                    "source": "end_user",
                    "source_id": f.source_id,
                    "created_at": _sim_now(day, 18).isoformat(),
                }
                for f in fb_by_day[day]
                if f.tenant == t
            ]
            for start in range(0, len(items), 1000):
                api.call("POST", "/v1/feedback", api.keys[t], {"feedback": items[start : start + 1000]})
                feedback_sent += len(items[start : start + 1000])

        # The scheduler's own job functions, on the simulated clock: the hourly monitoring (once, at day's end),
        # then the nightly pipeline (label quality, queue runs) and the training worker's queue.
        run_monitoring(db, settings, now=_sim_now(day))
        if reviewer is None:
            nightly_pipeline(db, settings)
        else:
            # nightly_pipeline's two steps, with the reviewer's day of decisions between them
            if settings.label_quality_enabled:
                from flywheel.feedback.jobs import label_quality_pass

                label_quality_pass(db, settings)
            reviewer.review_day(day)
            nightly_retrain(db, settings)
        process_queue(db, settings)

        with db.session() as session:
            task = session.scalar(select(Task).where(Task.name == TASK))
            assert task is not None
            logged = session.scalar(select(func.count(Prediction.id)).where(Prediction.task_id == task.id))
            stored_feedback = session.scalar(select(func.count(Feedback.id)))
            labeled = session.scalar(select(func.count(Prediction.id)).where(Prediction.effective_label.is_not(None)))
            runs = list(session.scalars(select(TrainingRun).where(TrainingRun.id > last_run).order_by(TrainingRun.id)))
            gate_log = [_gate_record(r) for r in runs]
            last_run = max([last_run, *(r.id for r in runs)])
            champion = _shared_champion(session, task.id)
            accuracy = _accuracy(champion, plan)
            corrected = set(reviewer.reviewed) if reviewer is not None else set()
            issues = _label_issue_scores(session, plan, corrected) if arm == "cleaned" else {}
            trained = _trained_accuracy(session, runs, plan)
            review_check = reviewer.check(session, task.id) if reviewer is not None else {}
        slas = api.call("GET", "/v1/slas", api.admin)["items"]
        alerts = api.call("GET", "/v1/alerts", api.admin)["items"]
        shifted = tenants[0]
        row = {
            "day": day,
            "arm": arm,
            "accuracy": accuracy,
            "champion": champion.version,
            "rung": champion.rung,
            "promoted": champion_before is not None and champion.id != champion_before,
            "served": served,
            "logged": logged,
            "feedback_sent": feedback_sent,
            "feedback_stored": stored_feedback,
            "labeled": labeled,
            "gate": gate_log,
            "trained_accuracy": trained,
            "label_issue_precision": issues.get("label_issue_precision"),
            "label_issue_recall": issues.get("label_issue_recall"),
            "excluded_precision": issues.get("excluded_precision"),
            "excluded_recall": issues.get("excluded_recall"),
            "n_flagged": issues.get("n_flagged"),
            "n_excluded": issues.get("n_excluded"),
            "reviews": reviewer.reviews_by_day.get(day, 0) if reviewer else 0,
            "review_hits": reviewer.hits_by_day.get(day, 0) if reviewer else 0,
            "reviews_total": len(reviewer.reviewed) if reviewer else 0,
            "review_hits_total": sum(reviewer.hits_by_day.values()) if reviewer else 0,
            **review_check,
            "sla_status": {s["tenant"]: s["status"] for s in slas},
            "sla_value": {s["tenant"]: s["value"] for s in slas},
            "drift": {s["tenant"]: (s.get("drift") or {}).get("status", "unknown") for s in slas},
            "drift_flagged": any(
                s["tenant"] == shifted and (s.get("drift") or {}).get("status") == "detected" for s in slas
            ),
            "alerts_new": len(alerts) - alerts_seen,
            "alerts": [
                {"tenant": a.get("tenant"), "kind": a.get("kind"), "status": a.get("status"), "to": a.get("to_status")}
                for a in alerts[: len(alerts) - alerts_seen]
            ],
        }
        alerts_seen = len(alerts)
        champion_before = champion.id
        rows.append(row)
        if progress is not None:
            progress(f"{arm} day {day}: accuracy {accuracy:.3f} ({champion.rung})")
    return rows


class Reviewer:
    """A person with a daily budget of review decisions, talking HTTP with a reviewer key per tenant.

    Every decision carries the true label: ``keep`` where the label shown is already right, ``relabel`` otherwise.
    A *hit* is a reviewed item whose label (the effective label when the reviewer saw it) was wrong.
    """

    def __init__(self, api: Client, tenants: list[str], plan: Plan, arm: str, cfg: SimConfig) -> None:
        self.api = api
        self.tenants = tenants
        self.arm = arm
        self.budget = cfg.review_budget
        self.truth = {i.id: i.label for i in plan.items}
        self.tenant_of = {i.id: i.tenant for i in plan.items}
        self.arrivals = sorted((f.day, f.item) for f in plan.feedback)
        self.rng = np.random.default_rng([cfg.seed, 1])
        self.keys = {
            t: api.call("POST", "/v1/keys", api.admin, {"tenant": t, "scopes": ["read", "ingest"], "name": "reviewer"})[
                "key"
            ]
            for t in tenants
        }
        self.reviewed: dict[str, bool] = {}  # client id -> its label was wrong
        self.reviews_by_day: Counter[int] = Counter()
        self.hits_by_day: Counter[int] = Counter()

    def review_day(self, day: int) -> None:
        picks = self._from_queue() if self.arm == "cleaned" else self._spot_check(day)
        for item_id, shown in picks:
            self.decide(day, item_id, shown)

    def _from_queue(self) -> list[tuple[str, str | None]]:
        """The first ``budget`` items of the review queue as the product shows them, the tenants' queues in turn."""
        queues = [
            self.api.call("GET", f"/v1/review?task={TASK}&kind=label_issue&limit={self.budget}", self.keys[t])["items"]
            for t in self.tenants
        ]
        picks: list[tuple[str, str | None]] = []
        for rank in range(self.budget):
            for queue in queues:
                if rank < len(queue) and len(picks) < self.budget:
                    picks.append((queue[rank]["prediction_id"], queue[rank]["effective_label"]))
        return picks

    def _spot_check(self, day: int) -> list[tuple[str, str | None]]:
        """``budget`` items with feedback (arrived by today) not reviewed yet, at random; their label as shown."""
        pool = sorted({item for d, item in self.arrivals if d <= day} - set(self.reviewed))
        size = min(self.budget, len(pool))
        chosen: list[int] = sorted(int(x) for x in self.rng.choice(len(pool), size=size, replace=False)) if pool else []
        picks: list[tuple[str, str | None]] = []
        for k in chosen:
            item_id = pool[k]
            shown = self.api.call("GET", f"/v1/predictions/{item_id}", self.keys[self.tenant_of[item_id]])
            picks.append((item_id, shown["effective_label"]))
        return picks

    def decide(self, day: int, item_id: str, shown: str | None) -> None:
        truth = self.truth[item_id]
        body: dict[str, Any] = {"decision": "keep", "reviewer": "sim-reviewer"}
        if shown != truth:
            body = {"decision": "relabel", "label": truth, "reviewer": "sim-reviewer"}
        out = self.api.call("POST", f"/v1/review/{item_id}", self.keys[self.tenant_of[item_id]], body)
        if out["effective_label"] != truth:
            raise RuntimeError(f"review of {item_id}: effective label {out['effective_label']!r}, not {truth!r}")
        self.reviewed[item_id] = shown != truth
        self.reviews_by_day[day] += 1
        self.hits_by_day[day] += shown != truth

    def check(self, session: Any, task_id: int) -> dict[str, Any]:
        """After the night: how many reviewed items' effective labels (in the database) still equal the truth."""
        from flywheel.models.records import Prediction

        if not self.reviewed:
            return {"reviewed_effective_true": 0}
        rows = session.execute(
            select(Prediction.client_id, Prediction.effective_label).where(
                Prediction.task_id == task_id, Prediction.client_id.in_(list(self.reviewed))
            )
        )
        return {"reviewed_effective_true": sum(label == self.truth[cid] for cid, label in rows)}


def _gate_record(run: Any) -> dict[str, Any]:
    """What the gate saw for one training run: its decision and the holdout metric of candidate and champion."""
    metrics = run.metrics or {}
    name = metrics.get("metric", "accuracy")

    def overall(key: str) -> float | None:
        evaluation = metrics.get(key) or {}
        value = (evaluation.get("overall") or {}).get(name)
        return None if value is None else float(value)

    return {
        "run": run.id,
        "tenant": run.tenant.slug if run.tenant else None,
        "status": run.status,
        "decision": run.decision,
        "rung": run.rung,
        "metric": name,
        "candidate": overall("candidate"),
        "champion": overall("champion"),
    }


def _shared_champion(session: Any, task_id: int) -> Any:

    model = champions.champion_for(session, task_id, None)
    assert model is not None, "every task has a champion from day one (zero-shot)"
    return model


_MODEL_CACHE: dict[tuple[str, int], float] = {}


def _accuracy(model: Any, plan: Plan) -> float:
    """The champion's accuracy on the untouched test split (cached per model version)."""
    from flywheel.retrain import registry

    key = (str(model.artifact_path or model.version), len(plan.test_texts))
    if key not in _MODEL_CACHE:
        clf = registry.load_model(model)
        proba = np.asarray(clf.predict_proba(plan.test_texts))
        predicted = [clf.labels[i] for i in proba.argmax(axis=1)]
        _MODEL_CACHE[key] = float(np.mean([p == y for p, y in zip(predicted, plan.test_labels, strict=True)]))
    return _MODEL_CACHE[key]


def _trained_accuracy(session: Any, runs: list[Any], plan: Plan) -> float | None:
    """Tonight's shared model on the test split, whether the gate promoted it or not (None: no model trained)."""
    from flywheel.models.training import ModelVersion

    shared = [r for r in runs if r.tenant_id is None and r.model_id is not None]
    if not shared:
        return None
    model = session.get(ModelVersion, shared[-1].model_id)
    return None if model is None else _accuracy(model, plan)


def _precision_recall(chosen: set[str], wrong: set[str]) -> tuple[float | None, float | None]:
    if not chosen and not wrong:
        return None, None
    tp = len(chosen & wrong)
    return (tp / len(chosen) if chosen else None), (tp / len(wrong) if wrong else None)


def _label_issue_scores(session: Any, plan: Plan, corrected: set[str] | None = None) -> dict[str, Any]:
    """Against the injected wrong labels: precision and recall of the flagged label issues (what goes to review)
    and of the labels left out of training (flagged ones the evidence supports, and unreliable sources' labels).
    ``corrected``: items a reviewer has decided, whose label is no longer the injected one (left out of both)."""
    from flywheel.feedback.results import excluded_client_ids, flagged_client_ids

    flagged = flagged_client_ids(session, TASK)
    excluded = excluded_client_ids(session, TASK)
    wrong = plan.wrong_ids - (corrected or set())
    p, r = _precision_recall(flagged, wrong)
    ep, er = _precision_recall(excluded, wrong)
    return {
        "label_issue_precision": p,
        "label_issue_recall": r,
        "excluded_precision": ep,
        "excluded_recall": er,
        "n_flagged": len(flagged),
        "n_excluded": len(excluded),
    }


# --- the whole run ------------------------------------------------------------------------------------------------


def simulate(cfg: SimConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run every arm, then write ``results.json``, ``results.md`` and the charts into ``cfg.out``."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(cfg)
    per_arm = {arm: run_arm(cfg, plan, arm, progress) for arm in cfg.arms}
    days = []
    for d in range(cfg.days):
        cleaned = per_arm.get("cleaned", per_arm[cfg.arms[0]])[d]
        row: dict[str, Any] = {
            "day": d,
            "accuracy_cleaned": per_arm["cleaned"][d]["accuracy"] if "cleaned" in per_arm else None,
            "accuracy_uncleaned": per_arm["uncleaned"][d]["accuracy"] if "uncleaned" in per_arm else None,
            "accuracy_true_labels": per_arm["true_labels"][d]["accuracy"] if "true_labels" in per_arm else None,
            "label_issue_precision": cleaned["label_issue_precision"],
            "label_issue_recall": cleaned["label_issue_recall"],
            "excluded_precision": cleaned.get("excluded_precision"),
            "excluded_recall": cleaned.get("excluded_recall"),
            "n_flagged": cleaned.get("n_flagged"),
            "n_excluded": cleaned.get("n_excluded"),
            "drift_flagged": cleaned["drift_flagged"],
            "sla_status": cleaned["sla_status"],
            "sla_value": cleaned["sla_value"],
            "promotions": {arm: per_arm[arm][d]["promoted"] for arm in per_arm},
            "trained_accuracy": {arm: per_arm[arm][d].get("trained_accuracy") for arm in per_arm},
            "champion": {arm: per_arm[arm][d]["champion"] for arm in per_arm},
            "rung": {arm: per_arm[arm][d]["rung"] for arm in per_arm},
            "alerts": cleaned["alerts"],
            "served": cleaned["served"],
            "logged": cleaned["logged"],
        }
        if cfg.review_budget > 0:
            for arm in ("cleaned", "uncleaned"):
                if arm in per_arm:
                    r = per_arm[arm][d]
                    row[f"reviews_{arm}"] = r["reviews"]
                    row[f"review_hits_{arm}"] = r["review_hits"]
                    row[f"review_hit_rate_{arm}"] = r["review_hits"] / r["reviews"] if r["reviews"] else None
                    row[f"review_hit_rate_{arm}_total"] = (
                        r["review_hits_total"] / r["reviews_total"] if r["reviews_total"] else None
                    )
        days.append(row)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    results = {
        "config": config,
        "injected_wrong_labels": len(plan.wrong_ids),
        "feedback_items": len(plan.feedback),
        "careless_items": sum(f.source_id == "careless-clicker" for f in plan.feedback),
        "shift_items": sum(i.shifted for i in plan.items),
        "days": days,
        "arms": per_arm,
    }
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (cfg.out / "results.md").write_text(results_table(results))
    draw_charts(results, cfg.out)
    return results


def results_table(results: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}"

    def count(x: int | None) -> str:
        return "–" if x is None else str(x)

    lines = [
        "| day | accuracy cleaned | uncleaned | true labels | flagged | issue precision | issue recall "
        "| left out of training | its precision | its recall | drift flagged | SLA status by tenant "
        "| promoted (cleaned) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    review = results["config"].get("review_budget", 0) > 0
    if review:
        lines[0] += " reviews (cleaned / uncleaned) | wrong labels found (cleaned / uncleaned) |"
        lines[1] += " --- | --- |"
    for d in results["days"]:
        status = ", ".join(f"{t}: {s}" for t, s in sorted(d["sla_status"].items()))
        extra = ""
        if review:
            extra = (
                f" {count(d.get('reviews_cleaned'))} / {count(d.get('reviews_uncleaned'))}"
                f" | {count(d.get('review_hits_cleaned'))} / {count(d.get('review_hits_uncleaned'))} |"
            )
        lines.append(
            f"| {d['day']} | {pct(d['accuracy_cleaned'])} | {pct(d['accuracy_uncleaned'])} "
            f"| {pct(d['accuracy_true_labels'])} | {count(d.get('n_flagged'))} | {pct(d['label_issue_precision'])} "
            f"| {pct(d['label_issue_recall'])} | {count(d.get('n_excluded'))} | {pct(d.get('excluded_precision'))} "
            f"| {pct(d.get('excluded_recall'))} | {'yes' if d['drift_flagged'] else 'no'} | {status} "
            f"| {'yes' if d['promotions'].get('cleaned') else ''} |{extra}"
        )
    return "\n".join(lines) + "\n"


def draw_charts(results: dict[str, Any], out: Path) -> None:
    """accuracy.png (three arms by day) and sla_status.png (status by tenant and day)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    days = [d["day"] for d in results["days"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, name, style in (
        ("accuracy_true_labels", "trained on true labels", "k--"),
        ("accuracy_cleaned", "with cleaning", "tab:green"),
        ("accuracy_uncleaned", "without cleaning", "tab:red"),
    ):
        values = [d[key] for d in results["days"]]
        if any(v is not None for v in values):
            ax.plot(days, [np.nan if v is None else 100 * v for v in values], style, marker="o", label=name)
    ax.set_xlabel("simulated day")
    ax.set_ylabel("champion accuracy on the test split (%)")
    ax.set_title("The flywheel: accuracy by day")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)

    tenants = sorted({t for d in results["days"] for t in d["sla_status"]})
    grid = np.full((len(tenants), len(days)), np.nan)
    for j, d in enumerate(results["days"]):
        for i, t in enumerate(tenants):
            if t in d["sla_status"]:
                grid[i, j] = STATUS_CODES.get(d["sla_status"][t], 3)
    cmap = ListedColormap(["#2e7d32", "#f9a825", "#c62828", "#9e9e9e"])
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(tenants) + 1.6))
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=3, aspect="auto")
    ax.set_xticks(range(len(days)), [str(d) for d in days])
    ax.set_yticks(range(len(tenants)), tenants)
    ax.set_xlabel("simulated day")
    ax.set_title("SLA status by tenant and day (cleaned arm)")
    for i in range(len(tenants)):
        for j in range(len(days)):
            if not np.isnan(grid[i, j]):
                label = {0: "met", 1: "at risk", 2: "breached", 3: "n/a"}[int(grid[i, j])]
                ax.text(j, i, label, ha="center", va="center", fontsize=8, color="white")
    fig.tight_layout()
    fig.savefig(out / "sla_status.png", dpi=120)
    plt.close(fig)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the README reports: last-day accuracies and gaps, drift day, alerts against measured values."""
    last = results["days"][-1]
    flagged_days = [d["day"] for d in results["days"] if d["drift_flagged"]]
    false_alerts: Counter[str] = Counter()
    for d in results["days"]:
        for alert in d["alerts"]:
            tenant = alert.get("tenant")
            value = d["sla_value"].get(tenant)
            above = value is not None and value >= results["config"]["sla_threshold"]
            if alert.get("kind") != "drift" and above and alert.get("to") == "breached":
                false_alerts[tenant] += 1
    out: dict[str, Any] = {
        "accuracy_cleaned": last["accuracy_cleaned"],
        "accuracy_uncleaned": last["accuracy_uncleaned"],
        "accuracy_true_labels": last["accuracy_true_labels"],
        "first_drift_day": flagged_days[0] if flagged_days else None,
        "breach_alerts_while_above_threshold": dict(false_alerts),
    }
    if last["accuracy_cleaned"] is not None and last["accuracy_true_labels"] is not None:
        out["gap_to_true_points"] = 100 * (last["accuracy_true_labels"] - last["accuracy_cleaned"])
    if last["accuracy_cleaned"] is not None and last["accuracy_uncleaned"] is not None:
        out["gain_over_uncleaned_points"] = 100 * (last["accuracy_cleaned"] - last["accuracy_uncleaned"])
    if results["config"].get("review_budget", 0) > 0:
        for arm in ("cleaned", "uncleaned"):
            rows = results["arms"].get(arm)
            if rows:
                n, hits = rows[-1]["reviews_total"], rows[-1]["review_hits_total"]
                out[f"reviews_{arm}"] = n
                out[f"review_hits_{arm}"] = hits
                out[f"review_hit_rate_{arm}"] = hits / n if n else None
    return out


# --- command line -------------------------------------------------------------------------------------------------


@click.command("simulate")
@click.option(
    "--train",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="CSV with text,label: the production traffic.",
)
@click.option(
    "--test",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="CSV with text,label: the untouched evaluation split.",
)
@click.option("--days", type=int, default=7, show_default=True)
@click.option("--daily", type=int, default=500, show_default=True, help="Predictions per day, all tenants.")
@click.option("--feedback-rate", type=float, default=0.5, show_default=True)
@click.option("--noise", type=float, default=0.2, show_default=True, help="Share of wrong feedback labels.")
@click.option(
    "--careless-share",
    type=float,
    default=0.25,
    show_default=True,
    help="Of the wrong labels, the share from one careless source.",
)
@click.option("--tenants", type=int, default=3, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--shift",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of shifted traffic (a new domain) that reaches the first tenant.",
)
@click.option("--shift-day", type=int, default=4, show_default=True)
@click.option("--database-url", "sim_database_url", help="A PostgreSQL server URL; SQLite files by default.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-limit", type=int, help="Score on the first N test rows only.")
@click.option(
    "--fine-tune-min-labels",
    type=int,
    default=10**9,
    show_default=True,
    help="Labels before the ladder fine-tunes the encoder (default: never; the few-shot head only).",
)
@click.option(
    "--review-budget",
    type=int,
    default=0,
    show_default=True,
    help="Reviewer decisions per simulated day and task (true labels): the review queue's first items in the "
    "cleaned arm, a random spot-check of labeled items in the uncleaned arm.",
)
@click.option("--arms", default=",".join(ARMS), show_default=True)
def simulate_command(**opts: Any) -> None:
    """Replay labeled text as production traffic through a running server, over simulated days."""
    from tqdm import tqdm

    arms = tuple(a.strip() for a in opts.pop("arms").split(",") if a.strip())
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise click.UsageError(f"unknown arms: {', '.join(sorted(unknown))}")
    cfg = SimConfig(
        train=opts["train"],
        test=opts["test"],
        out=opts["out"],
        days=opts["days"],
        daily=opts["daily"],
        feedback_rate=opts["feedback_rate"],
        noise=opts["noise"],
        careless_share=opts["careless_share"],
        tenants=opts["tenants"],
        shift=opts["shift"],
        shift_day=opts["shift_day"],
        database_url=opts["sim_database_url"],
        seed=opts["seed"],
        test_limit=opts["test_limit"],
        arms=arms,
        review_budget=opts["review_budget"],
        settings={"fine_tune_min_labels": opts["fine_tune_min_labels"]},
    )
    bar = tqdm(total=cfg.days * len(arms), desc="simulated days", unit="day")

    def progress(message: str) -> None:
        bar.set_postfix_str(message)
        bar.update(1)

    results = simulate(cfg, progress)
    bar.close()
    click.echo(results_table(results))
    click.echo(json.dumps(summarize(results), indent=2))
    click.echo(
        f"results: {cfg.out / 'results.json'}, charts: {cfg.out / 'accuracy.png'}, {cfg.out / 'sla_status.png'}",
        err=True,
    )
