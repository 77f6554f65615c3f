"""A short flywheel simulation on real text: the loop's invariants hold end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from flywheel.simulation import SimConfig, simulate, summarize

from support import shared_data

pytestmark = pytest.mark.slow

REVIEW_BUDGET = 8
LABELS = ["card_arrival", "card_linking", "exchange_rate", "lost_or_stolen_card", "pin_blocked", "top_up_failed"]


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("sim")
    with shared_data("banking77", "train.csv").open(newline="") as fh:
        train = [(r["text"], r["label"]) for r in csv.DictReader(fh) if r["label"] in LABELS]
    with shared_data("banking77", "test.csv").open(newline="") as fh:
        test = [(r["text"], r["label"]) for r in csv.DictReader(fh) if r["label"] in LABELS]
    with shared_data("clinc150", "train.csv").open(newline="") as fh:
        shift = [(r["text"], r["label"]) for r in csv.DictReader(fh) if r["domain"] == "travel"][:150]
    cfg = SimConfig(
        train=_write(tmp / "train.csv", train),
        test=_write(tmp / "test.csv", test[:120]),
        shift=_write(tmp / "shift.csv", shift),
        out=tmp / "out",
        days=3,
        daily=80,
        tenants=2,
        shift_day=1,
        shift_share=0.8,
        feedback_rate=0.7,
        noise=0.2,
        arms=("cleaned", "uncleaned"),
        review_budget=REVIEW_BUDGET,
        settings={"fine_tune_min_labels": 10**9, "few_shot_min_per_class": 2},
    )
    return simulate(cfg)


def test_every_served_prediction_is_logged_and_feedback_joins(results: dict) -> None:
    for arm, rows in results["arms"].items():
        for row in rows:
            assert row["logged"] == row["served"], arm
            # the users' feedback and the reviewer's decisions (stored as feedback with source "reviewer")
            assert row["feedback_stored"] == row["feedback_sent"] + row["reviews_total"], arm
            assert row["labeled"] > 0 or row["day"] == 0
        assert rows[-1]["served"] == 3 * 80


def test_the_gate_never_promotes_a_worse_model(results: dict) -> None:
    promoted = 0
    for rows in results["arms"].values():
        for row in rows:
            for run in row["gate"]:
                if run["decision"] == "promoted" and run["champion"] is not None:
                    promoted += 1
                    assert run["candidate"] >= run["champion"] - 0.02, run
                if run["status"] == "rejected":
                    assert run["decision"] != "promoted"
    days = results["days"]
    assert any(d["promotions"]["cleaned"] for d in days), "the loop never replaced the zero-shot model"


def test_reviewers_set_the_true_label_and_the_queue_finds_more_wrong_labels_than_a_spot_check(results: dict) -> None:
    totals = {}
    for arm in ("cleaned", "uncleaned"):
        rows = results["arms"][arm]
        for row in rows:
            assert 0 < row["reviews"] <= REVIEW_BUDGET, (arm, row["day"])
            # every reviewed item's effective label is the true one, after the night's pass and training too
            assert row["reviewed_effective_true"] == row["reviews_total"], (arm, row["day"])
        assert rows[-1]["reviews_total"] == sum(r["reviews"] for r in rows)
        totals[arm] = (rows[-1]["review_hits_total"], rows[-1]["reviews_total"])
    assert results["config"]["review_budget"] == REVIEW_BUDGET
    summary = summarize(results)
    assert summary["review_hit_rate_cleaned"] == totals["cleaned"][0] / totals["cleaned"][1]
    # the queue puts likely label errors first; a random spot-check finds them at about the noise rate (0.2)
    assert summary["review_hit_rate_cleaned"] > summary["review_hit_rate_uncleaned"], totals


def test_the_shifted_tenant_is_flagged_for_drift_on_the_day_the_shift_starts(results: dict) -> None:
    drift = [d["drift"] for d in results["arms"]["cleaned"]]
    assert drift[0]["tenant-1"] != "detected", drift  # day 0 has no reference yet
    assert drift[1]["tenant-1"] == "detected", drift  # the shift starts on day 1
    assert summarize(results)["first_drift_day"] == 1


def test_results_folder_has_the_table_and_the_charts(results: dict) -> None:
    out = Path(results["config"]["out"])
    saved = json.loads((out / "results.json").read_text())
    assert [d["day"] for d in saved["days"]] == [0, 1, 2]
    for key in (
        "accuracy_cleaned",
        "accuracy_uncleaned",
        "accuracy_true_labels",
        "label_issue_precision",
        "label_issue_recall",
        "excluded_precision",
        "excluded_recall",
        "n_flagged",
        "n_excluded",
        "drift_flagged",
        "reviews_cleaned",
        "review_hit_rate_uncleaned",
    ):
        assert key in saved["days"][0]
    last = saved["days"][-1]
    assert last["n_flagged"] > 0 and last["n_excluded"] is not None
    assert saved["days"][-1]["accuracy_cleaned"] > 0.5  # six intents: chance is 1/6
    assert (out / "accuracy.png").stat().st_size > 10_000 and (out / "sla_status.png").stat().st_size > 5_000
    assert "| day |" in (out / "results.md").read_text()
    assert set(summarize(saved)) >= {"accuracy_cleaned", "first_drift_day"}
