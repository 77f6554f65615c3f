"""A short flywheel simulation on real text: the loop's invariants hold end to end, the simulated nights are the
scheduler's own jobs, and what the run reports is what its databases hold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from flywheel.core.db import Database
from flywheel.feedback.results import excluded_client_ids, flagged_client_ids
from flywheel.models.label_quality import LabelQualityRun
from flywheel.models.records import Feedback, Prediction
from flywheel.models.training import JobRun, ModelVersion, TrainingRun
from flywheel.scheduler import JOB_MONITORING, JOB_NIGHTLY
from sim.report import summarize
from sim.reviewer import REVIEWER
from sim.scenario import T0, TASK

from support.simulation import REVIEW_BUDGET, Simulation

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class JobWindow:
    fire_key: str
    owner: str
    status: str
    result: Any  # what the job returned (the nightly job: the queued run ids)
    started_at: datetime
    finished_at: datetime


def job_runs(db: Database, job_id: str) -> list[JobWindow]:
    with db.session() as session:
        rows = session.scalars(select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.id))
        return [
            JobWindow(r.fire_key, r.owner, r.status, r.detail.get("result"), r.started_at, r.finished_at)
            for r in rows
            if r.finished_at is not None
        ]


def reviewer_decisions(db: Database) -> list[tuple[str, str, datetime]]:
    """(client id, decision, received at) of every reviewer decision stored, oldest first."""
    with db.session() as session:
        rows = session.execute(
            select(Prediction.client_id, Feedback.decision, Feedback.received_at)
            .join(Prediction, Prediction.id == Feedback.prediction_id)
            .where(Feedback.source == "reviewer", Feedback.source_id == REVIEWER)
            .order_by(Feedback.id)
        )
        return [(cid, str(decision), at) for cid, decision, at in rows]


def decisions_by_night(db: Database) -> list[list[tuple[str, str, datetime]]]:
    """The reviewer's decisions, bucketed by the night they were made in: after that night's nightly job finished,
    before the next night's started (the database's own clock)."""
    nights = job_runs(db, JOB_NIGHTLY)
    decisions = reviewer_decisions(db)
    buckets = []
    for i, night in enumerate(nights):
        end = nights[i + 1].started_at if i + 1 < len(nights) else datetime.max.replace(tzinfo=night.finished_at.tzinfo)
        buckets.append([d for d in decisions if night.finished_at < d[2] < end])
    assert sum(map(len, buckets)) == len(decisions), "a decision outside every night"
    return buckets


def test_every_served_prediction_is_logged_and_feedback_joins(simulation: Simulation) -> None:
    for arm, rows in simulation.results.arms.items():
        for row in rows:
            assert row.stored.logged == row.served, arm
            # the users' feedback and the reviewer's decisions (stored as feedback with source "reviewer")
            assert row.stored.feedback_stored == row.feedback_sent + row.stored.review.reviews_total, arm
            assert row.stored.labeled > 0
        with simulation.databases[arm].session() as session:
            logged = set(session.scalars(select(Prediction.client_id)))
        assert logged == {i.id for i in simulation.plan.items}, arm


def test_each_simulated_night_is_the_schedulers_nightly_job_on_the_simulated_clock(simulation: Simulation) -> None:
    days = range(simulation.cfg.days)
    for arm, db in simulation.databases.items():
        # once per fire time, as a scheduler records them: the hourly job at 23:00, the 02:00 nightly cron after it
        monitoring = job_runs(db, JOB_MONITORING)
        assert [(r.fire_key, r.status) for r in monitoring] == [
            ((T0 + timedelta(days=d, hours=23)).strftime("%Y-%m-%dT%H:%M:%SZ"), "succeeded") for d in days
        ], arm
        nights = job_runs(db, JOB_NIGHTLY)
        assert [(r.fire_key, r.status) for r in nights] == [
            ((T0 + timedelta(days=d + 1, hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"), "succeeded") for d in days
        ], arm
        with db.session() as session:
            runs = list(session.scalars(select(TrainingRun).order_by(TrainingRun.id)))
            passes = list(session.scalars(select(LabelQualityRun).order_by(LabelQualityRun.id)))
        # every training run was queued by a nightly job (the ids it returned), and trained after it
        assert [r.id for r in runs] == [i for night in nights for i in night.result], arm
        for night in nights:
            queued = [r for r in runs if r.id in night.result]
            assert queued and all(r.trigger == "nightly" for r in queued), (arm, night.fire_key)
            assert all(night.started_at <= r.created_at <= night.finished_at for r in queued)
            assert all(r.status in ("succeeded", "rejected") and r.started_at > night.finished_at for r in queued)
        # the label-quality passes ran inside the nightly jobs, on the cleaned arm only (label quality off otherwise)
        if arm == "cleaned":
            for night in nights:
                inside = [p for p in passes if night.started_at <= p.started_at <= night.finished_at]
                assert inside and all(p.trigger == "schedule" for p in inside), night.fire_key
            in_a_night = [p for p in passes if any(n.started_at <= p.started_at <= n.finished_at for n in nights)]
            assert in_a_night == passes
        else:
            assert passes == [], arm


def test_each_nights_champion_is_the_model_the_gate_promoted_and_never_a_worse_one(simulation: Simulation) -> None:
    for arm, db in simulation.databases.items():
        with db.session() as session:
            zero_shot = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).first()
            assert zero_shot is not None
            champion = zero_shot.version
            for row in simulation.results.arms[arm]:
                promoted = [g for g in row.stored.gate if g.tenant is None and g.decision == "promoted"]
                for g in promoted:
                    if g.champion is not None:
                        assert g.candidate is not None and g.candidate >= g.champion - 0.02, g
                if promoted:
                    run = session.get(TrainingRun, promoted[-1].run)
                    assert run is not None and run.model_id is not None
                    model = session.get(ModelVersion, run.model_id)
                    assert model is not None
                    champion = model.version
                assert row.stored.champion == champion, (arm, row.day)
                assert row.promoted == bool(promoted), (arm, row.day)
    assert any(r.promoted for r in simulation.results.arms["cleaned"]), "the loop never replaced the zero-shot model"


def test_the_review_budget_limits_each_nights_decisions_and_reviewers_set_the_true_label(
    simulation: Simulation,
) -> None:
    truth = {i.id: i.label for i in simulation.plan.items}
    for arm, db in simulation.databases.items():
        nights = decisions_by_night(db)
        rows = simulation.results.arms[arm]
        assert [len(n) for n in nights] == [r.stored.review.reviews for r in rows], arm
        assert all(0 < len(n) <= REVIEW_BUDGET for n in nights), arm
        if arm == "uncleaned":  # a spot-check of labeled items always has more than the budget to pick from
            assert all(len(n) == REVIEW_BUDGET for n in nights)
        # a hit is a relabel (the label shown was wrong); the run's counts are the database's
        assert [sum(d[1] == "relabel" for d in n) for n in nights] == [r.stored.review.review_hits for r in rows]
        with db.session() as session:
            effective = dict(session.execute(select(Prediction.client_id, Prediction.effective_label)).tuples().all())
        reviewed = {d[0] for n in nights for d in n}
        # after every night's pass and training, each reviewed item still carries its true label
        assert {cid: effective[cid] for cid in reviewed} == {cid: truth[cid] for cid in reviewed}, arm


def test_the_review_queue_finds_more_wrong_labels_than_a_spot_check(simulation: Simulation) -> None:
    summary = summarize(simulation.results)
    for arm, db in simulation.databases.items():
        decisions = reviewer_decisions(db)
        assert summary[f"reviews_{arm}"] == len(decisions)
        assert summary[f"review_hit_rate_{arm}"] == sum(d[1] == "relabel" for d in decisions) / len(decisions)
    # the queue puts likely label errors first; a random spot-check finds them at about the noise rate (0.2)
    assert summary["review_hit_rate_cleaned"] > summary["review_hit_rate_uncleaned"], summary


def test_the_shifted_tenant_is_flagged_for_drift_on_the_day_the_shift_starts(simulation: Simulation) -> None:
    drift = [row.monitoring.drift for row in simulation.results.arms["cleaned"]]
    assert drift[0]["tenant-1"] != "detected", drift  # day 0 has no reference yet
    assert drift[1]["tenant-1"] == "detected", drift  # the shift starts on day 1
    assert summarize(simulation.results)["first_drift_day"] == 1


def _table(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")][2:]  # past the header and its rule
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


def _champion_accuracies(simulation: Simulation, arm: str) -> list[float]:
    """Each day's champion, loaded from the arm's database and scored on the test split here."""
    from flywheel.retrain import registry

    scores: dict[str, float] = {}
    with simulation.databases[arm].session() as session:
        for row in simulation.results.arms[arm]:
            if row.stored.champion not in scores:
                model = session.scalar(select(ModelVersion).where(ModelVersion.version == row.stored.champion))
                assert model is not None
                clf = registry.load_model(model)
                predicted = np.asarray(clf.predict_proba(simulation.plan.test_texts)).argmax(axis=1)
                correct = [clf.labels[p] == y for p, y in zip(predicted, simulation.plan.test_labels, strict=True)]
                scores[row.stored.champion] = float(np.mean(correct))
    return [scores[row.stored.champion] for row in simulation.results.arms[arm]]


def test_the_results_table_reports_what_the_databases_hold(simulation: Simulation) -> None:
    out = simulation.cfg.out
    table = _table((out / "results.md").read_text())
    assert [row[0] for row in table] == [str(d) for d in range(simulation.cfg.days)]
    for arm, column in (("cleaned", 1), ("uncleaned", 2)):
        assert [row[column] for row in table] == [f"{100 * a:.1f}" for a in _champion_accuracies(simulation, arm)]
    assert [row[3] for row in table] == ["–"] * simulation.cfg.days  # the true-label arm did not run
    with simulation.databases["cleaned"].session() as session:  # the last day's label-quality figures
        assert table[-1][4] == str(len(flagged_client_ids(session, TASK)))
        assert table[-1][7] == str(len(excluded_client_ids(session, TASK)))
    by_night = {arm: decisions_by_night(db) for arm, db in simulation.databases.items()}
    for day, row in enumerate(table):
        nights = {arm: nights[day] for arm, nights in by_night.items()}
        assert row[13] == f"{len(nights['cleaned'])} / {len(nights['uncleaned'])}"
        hits = {arm: sum(d[1] == "relabel" for d in n) for arm, n in nights.items()}
        assert row[14] == f"{hits['cleaned']} / {hits['uncleaned']}"
    # results.json holds what the run returned
    assert json.loads((out / "results.json").read_text()) == json.loads(
        json.dumps(simulation.results.as_json(), default=str)
    )


def test_the_charts_draw_both_arms_and_every_tenants_status(simulation: Simulation) -> None:
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    def pixels_near(image: np.ndarray, color: str) -> int:
        return int((np.abs(image[..., :3] - np.array(to_rgb(color))).max(axis=-1) < 0.08).sum())

    accuracy = imread(simulation.cfg.out / "accuracy.png")
    assert pixels_near(accuracy, "tab:green") > 200 and pixels_near(accuracy, "tab:red") > 200  # two lines
    sla = imread(simulation.cfg.out / "sla_status.png")
    statuses = {s for row in simulation.results.arms["cleaned"] for s in row.monitoring.sla_status.values()}
    colors = {"met": "#2e7d32", "at_risk": "#f9a825", "breached": "#c62828", "insufficient_data": "#9e9e9e"}
    for status, color in colors.items():
        assert (pixels_near(sla, color) > 500) == (status in statuses), status


def test_the_run_writes_only_under_its_out_folder(simulation: Simulation) -> None:
    out = simulation.cfg.out.resolve()
    for arm, db in simulation.databases.items():
        with db.session() as session:
            paths = [p for p in session.scalars(select(ModelVersion.artifact_path)) if p is not None]
        assert paths, arm
        assert all(out in Path(p).resolve().parents for p in paths), paths
