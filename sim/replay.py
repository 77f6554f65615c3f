"""One arm, replayed day by day: traffic and feedback over HTTP, the scheduler's night, then what the day left.

Each stage returns a typed record; ``DayRow`` gathers one day's records into the row ``results.json`` keeps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select

from flywheel.models.records import Feedback, Prediction, Task
from flywheel.models.training import ModelVersion, TrainingRun
from sim.harness import ApiClient, ArmSystem, running_system
from sim.measures import (
    GateRecord,
    LabelIssueScores,
    TestSplitScorer,
    gate_record,
    gate_verdict,
    label_issue_scores,
    shared_champion,
)
from sim.night import run_night
from sim.reviewer import Reviewer
from sim.scenario import TASK, Progress, SimConfig, sim_time
from sim.traffic import Plan

PREDICT_CHUNK = 256  # the API's max_predict_inputs
FEEDBACK_CHUNK = 1000  # the API's max_batch_items


@dataclass
class ArmTally:
    """What carries from one simulated day to the next."""

    champion_id: int  # the shared champion serving when the day starts
    served: int = 0
    feedback_sent: int = 0
    alerts_seen: int = 0


@dataclass(frozen=True)
class AlertRecord:
    tenant: str | None
    kind: str | None
    status: str | None
    to: str | None


@dataclass(frozen=True)
class MonitoringView:
    """What the customer-success admin sees through the API after the night: SLA and drift status, new alerts."""

    sla_status: dict[str, str]
    sla_value: dict[str, float | None]
    drift: dict[str, str]
    drift_flagged: bool  # drift detected on the tenant that receives the shifted traffic
    alerts_new: int
    alerts: list[AlertRecord]


@dataclass(frozen=True)
class ReviewTally:
    reviews: int = 0  # decisions today
    review_hits: int = 0  # of them, labels that were wrong
    reviews_total: int = 0
    review_hits_total: int = 0
    reviewed_effective_true: int | None = None  # reviewed items whose effective label is the truth (None: no reviewer)


@dataclass(frozen=True)
class StoredDay:
    """What the database holds after the night."""

    logged: int
    feedback_stored: int
    labeled: int
    gate: list[GateRecord]  # tonight's training runs
    champion_id: int
    champion: str  # the shared champion's version
    rung: str
    accuracy: float  # the shared champion on the test split
    trained_accuracy: float | None  # tonight's shared model on the test split, promoted or not
    issues: LabelIssueScores
    review: ReviewTally


@dataclass(frozen=True)
class DayRow:
    day: int
    arm: str
    promoted: bool  # the shared champion changed tonight
    champion_before: float  # the accuracy on the test split of the shared champion tonight's gate judged against
    served: int
    feedback_sent: int
    stored: StoredDay
    monitoring: MonitoringView

    @property
    def gate_verdict(self) -> str | None:
        """Tonight's gate decision on the shared model, judged by the test split (``measures.gate_verdict``)."""
        return gate_verdict(self.promoted, self.champion_before, self.stored.trained_accuracy)

    def as_json(self) -> dict[str, Any]:
        """The row as ``results.json`` keeps it (``arms``)."""
        s, m = self.stored, self.monitoring
        row: dict[str, Any] = {
            "day": self.day,
            "arm": self.arm,
            "accuracy": s.accuracy,
            "champion": s.champion,
            "rung": s.rung,
            "promoted": self.promoted,
            "champion_before_accuracy": self.champion_before,
            "gate_verdict": self.gate_verdict,
            "served": self.served,
            "logged": s.logged,
            "feedback_sent": self.feedback_sent,
            "feedback_stored": s.feedback_stored,
            "labeled": s.labeled,
            "gate": [asdict(g) for g in s.gate],
            "trained_accuracy": s.trained_accuracy,
            **asdict(s.issues),
            **asdict(s.review),
            "sla_status": m.sla_status,
            "sla_value": m.sla_value,
            "drift": m.drift,
            "drift_flagged": m.drift_flagged,
            "alerts_new": m.alerts_new,
            "alerts": [asdict(a) for a in m.alerts],
        }
        if s.review.reviewed_effective_true is None:
            del row["reviewed_effective_true"]
        return row


def run_arm(
    cfg: SimConfig, plan: Plan, arm: str, scorer: TestSplitScorer, progress: Progress | None = None
) -> list[DayRow]:
    """Replay the plan through a fresh system; one row per simulated day."""
    rows: list[DayRow] = []
    with running_system(cfg, arm) as system:
        set_up_customers(system.api, cfg, plan)
        reviewer = None
        if cfg.review_budget > 0 and arm != "true_labels":
            reviewer = Reviewer(system.api, plan.tenants, plan, arm, cfg)
        tally = ArmTally(champion_id=serving_champion_id(system))
        for day in range(cfg.days):
            row = replay_day(system, plan, day, reviewer, scorer, tally)
            rows.append(row)
            if progress is not None:
                progress(f"{arm} day {day}: accuracy {row.stored.accuracy:.3f} ({row.stored.rung})")
    return rows


def set_up_customers(api: ApiClient, cfg: SimConfig, plan: Plan) -> None:
    """Day 0's set-up by an admin: the task (its zero-shot model serves at once) and its labeling rules (with
    ``--rules``), the tenants, their keys and SLAs."""
    api.call("POST", "/v1/tasks", api.admin, {"name": TASK, "labels": plan.labels})
    if cfg.rules is not None:  # the customer's labeling rules, before any traffic: they vote from the first request
        api.call("PUT", f"/v1/tasks/{TASK}/rules", api.admin, json.loads(cfg.rules.read_text()))
    sla = {
        "metric": "accuracy",
        "threshold": cfg.sla_threshold,
        "window_days": cfg.sla_window_days,
        "min_labeled": cfg.sla_min_labeled,
    }
    for t in plan.tenants:
        api.call("POST", "/v1/tenants", api.admin, {"slug": t, "name": t.replace("-", " ").title()})
        api.keys[t] = api.call("POST", "/v1/keys", api.admin, {"tenant": t, "scopes": ["ingest", "read"]})["key"]
        api.call("PUT", f"/v1/slas/{t}/{TASK}", api.admin, sla)


def serving_champion_id(system: ArmSystem) -> int:
    """The shared champion serving the task now (before the first night: the zero-shot model)."""
    with system.db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        return shared_champion(session, task.id).id


def replay_day(
    system: ArmSystem, plan: Plan, day: int, reviewer: Reviewer | None, scorer: TestSplitScorer, tally: ArmTally
) -> DayRow:
    """One simulated day: noon's traffic, the evening's feedback, the scheduler's night, then the day's row."""
    tally.served += send_traffic(system.api, plan, day)
    tally.feedback_sent += send_feedback(system.api, plan, day, true_labels=system.arm == "true_labels")
    with system.db.session() as session:
        before = session.get(ModelVersion, tally.champion_id)
        assert before is not None
        champion_before = scorer.accuracy(before)
    night = run_night(system.db, system.settings, day, (lambda: reviewer.review_day(day)) if reviewer else None)
    stored = read_stored_day(system, plan, day, night.trained, reviewer, scorer)
    monitoring = read_monitoring(system.api, plan.tenants[0], tally.alerts_seen)
    row = DayRow(
        day=day,
        arm=system.arm,
        promoted=stored.champion_id != tally.champion_id,
        champion_before=champion_before,
        served=tally.served,
        feedback_sent=tally.feedback_sent,
        stored=stored,
        monitoring=monitoring,
    )
    tally.alerts_seen += monitoring.alerts_new
    tally.champion_id = stored.champion_id
    return row


def send_traffic(api: ApiClient, plan: Plan, day: int) -> int:
    """Every tenant's traffic of the day through ``POST /v1/predict``, stamped noon; returns the predictions served."""
    stamp = sim_time(day, 12).isoformat()
    served = 0
    for t in plan.tenants:
        todays = plan.items_on(day, t)
        for start in range(0, len(todays), PREDICT_CHUNK):
            chunk = todays[start : start + PREDICT_CHUNK]
            body = {"task": TASK, "inputs": [{"id": i.id, "text": i.text, "created_at": stamp} for i in chunk]}
            served += len(api.call("POST", "/v1/predict", api.keys[t], body)["predictions"])
    return served


def send_feedback(api: ApiClient, plan: Plan, day: int, *, true_labels: bool) -> int:
    """The feedback arriving today through ``POST /v1/feedback``, stamped 18:00; returns how many were sent."""
    sent = 0
    for t in plan.tenants:
        items = [
            {
                "id": f"fb-{f.item}",
                "prediction_id": f.item,
                "label": f.true_label if true_labels else f.noisy_label,
                "source": "end_user",
                "source_id": f.source_id,
                "created_at": sim_time(day, 18).isoformat(),
            }
            for f in plan.feedback_on(day, t)
        ]
        for start in range(0, len(items), FEEDBACK_CHUNK):
            api.call("POST", "/v1/feedback", api.keys[t], {"feedback": items[start : start + FEEDBACK_CHUNK]})
            sent += len(items[start : start + FEEDBACK_CHUNK])
    return sent


def read_stored_day(
    system: ArmSystem, plan: Plan, day: int, trained: list[int], reviewer: Reviewer | None, scorer: TestSplitScorer
) -> StoredDay:
    """Counts, tonight's training runs (``trained``) and the champion, from the database."""
    with system.db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        logged = session.scalar(select(func.count(Prediction.id)).where(Prediction.task_id == task.id))
        feedback_stored = session.scalar(select(func.count(Feedback.id)))
        labeled = session.scalar(select(func.count(Prediction.id)).where(Prediction.effective_label.is_not(None)))
        runs = list(session.scalars(select(TrainingRun).where(TrainingRun.id.in_(trained)).order_by(TrainingRun.id)))
        champion = shared_champion(session, task.id)
        review = ReviewTally()
        if reviewer is not None:
            review = ReviewTally(
                reviews=reviewer.reviews_by_day.get(day, 0),
                review_hits=reviewer.hits_by_day.get(day, 0),
                reviews_total=len(reviewer.reviewed),
                review_hits_total=sum(reviewer.hits_by_day.values()),
                reviewed_effective_true=reviewer.still_true(session, task.id),
            )
        issues = LabelIssueScores()
        if system.arm == "cleaned":
            issues = label_issue_scores(session, plan, set(reviewer.reviewed) if reviewer is not None else set())
        return StoredDay(
            logged=logged or 0,
            feedback_stored=feedback_stored or 0,
            labeled=labeled or 0,
            gate=[gate_record(r) for r in runs],
            champion_id=champion.id,
            champion=champion.version,
            rung=champion.rung,
            accuracy=scorer.accuracy(champion),
            trained_accuracy=scorer.trained_accuracy(session, runs),
            issues=issues,
            review=review,
        )


def read_monitoring(api: ApiClient, shifted_tenant: str, alerts_seen: int) -> MonitoringView:
    """SLA status, drift and the alerts raised since ``alerts_seen``, as ``GET /v1/slas`` and ``/v1/alerts`` show
    them (the newest alerts first)."""
    slas = api.call("GET", "/v1/slas", api.admin)["items"]
    alerts = api.call("GET", "/v1/alerts", api.admin)["items"]
    new = alerts[: len(alerts) - alerts_seen]
    return MonitoringView(
        sla_status={s["tenant"]: s["status"] for s in slas},
        sla_value={s["tenant"]: s["value"] for s in slas},
        drift={s["tenant"]: (s.get("drift") or {}).get("status", "unknown") for s in slas},
        drift_flagged=any(
            s["tenant"] == shifted_tenant and (s.get("drift") or {}).get("status") == "detected" for s in slas
        ),
        alerts_new=len(new),
        alerts=[AlertRecord(a.get("tenant"), a.get("kind"), a.get("status"), a.get("to_status")) for a in new],
    )
